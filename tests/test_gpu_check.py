"""The GPU check's own logic on the CPU: where it finds the config folder, the shrunk real config,
its pass/fail verdicts; and (slow) its whole real-model dry run."""

from __future__ import annotations

import doctest
import math

import pytest

from benchmarks import gpu_check

from tests.conftest import SHARED_DATA  # noqa: E402

SHARED = SHARED_DATA / "hub" / gpu_check.HUB_NAME
needs_shared = pytest.mark.skipif(not (SHARED / "config.json").is_file(), reason=f"{SHARED} is not here")


def test_docstring_examples():
    result = doctest.testmod(gpu_check)
    assert result.attempted > 0 and result.failed == 0, result


def test_hub_dir_given_or_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert gpu_check.find_hub_dir(str(tmp_path)) == tmp_path
    with pytest.raises(SystemExit, match="--copy-hub"):
        gpu_check.find_hub_dir(str(tmp_path / "missing"))


@needs_shared
def test_shrunk_config_keeps_the_vocabulary():
    full, small = gpu_check.real_config(SHARED, False), gpu_check.real_config(SHARED, True)
    assert (full.num_hidden_layers, full.hidden_size, full.vocab_size) == (28, 1536, 151936)
    assert (small.num_hidden_layers, small.hidden_size, small.vocab_size) == (2, 256, 151936)
    assert small.eos_token_id == full.eos_token_id and small.tie_word_embeddings


def test_verdicts():
    assert gpu_check.loss_falls([11.9, 11.0, 10.2])
    assert not gpu_check.loss_falls([11.9, 12.0]) and not gpu_check.loss_falls([math.nan, 1.0])
    assert not gpu_check.loss_falls([11.9])
    assert gpu_check.policy_moves([1e-5, 2e-4], [1.0, 0.999])
    assert not gpu_check.policy_moves([0.0, 0.0], [1.0, 1.0])  # stale weights: no update reached a forward
    assert not gpu_check.policy_moves([1e-5, 2e-4], [1.0, 1.0])
    assert not gpu_check.policy_moves([1e-5], [0.999])  # one step proves nothing


@pytest.mark.slow
@needs_shared
def test_cpu_dry_run(capsys):
    assert gpu_check.main(["--device", "cpu", "--quick", "--shrink", "--sizes", ""]) == 0
    assert "gpu_check: all checks passed" in capsys.readouterr().out


def test_a_failed_check_fails_the_run(tmp_path, monkeypatch, capsys):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(gpu_check, "real_check", lambda *a: {"sft": {"ok": True}, "grpo": {"ok": False}})
    assert gpu_check.main(["--device", "cpu", "--hub-dir", str(tmp_path), "--sizes", ""]) == 1
    assert "gpu_check: FAILED grpo" in capsys.readouterr().out
