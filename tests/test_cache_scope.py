"""A stage's cache key takes the code it runs, not the whole library: the modules its process can
import (followed statically from the stage's module and the runner, lazy imports and modules run by
name included), the package's assets and the lock file. ``r1flow status --explain`` shows the parts."""

from __future__ import annotations

import shutil

import pytest

from r1flow import cache
from tests.conftest import r1flow


def _rel(paths) -> set[str]:
    return {str(p.relative_to(cache.PACKAGE)) for p in paths}


def test_a_stage_runs_its_modules_and_not_the_others():
    rl = _rel(cache.stage_modules("r1_zero"))
    assert {"stages/rl.py", "stages/runner.py", "grpo/trainer.py", "grpo/loss.py", "loading.py",
            "rewards/worker.py"} <= rl  # worker.py: run as ``python -m r1flow.rewards.worker``
    assert not {"estimate.py", "memory_plan.py", "registry.py", "experiments/report.py", "stages/sft.py"} & rl
    assert "stages/rl.py" not in _rel(cache.stage_modules("sft"))
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        cache.stage_modules("nope")


def test_an_edit_outside_a_stages_modules_leaves_its_key_alone(tmp_path, monkeypatch):
    copy = tmp_path / "r1flow"
    shutil.copytree(cache.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "constraints.txt").write_text("torch==2.13.0\n")
    monkeypatch.setattr(cache, "PACKAGE", copy)
    monkeypatch.setattr(cache, "LOCK", tmp_path / "constraints.txt")

    def versions() -> tuple[str, str]:
        cache.code_version.cache_clear()
        cache.stage_modules.cache_clear()
        return cache.code_version("r1_zero"), cache.code_version("sft")

    try:
        before = versions()
        (copy / "estimate.py").write_text((copy / "estimate.py").read_text() + "\n# an edit\n")
        assert versions() == before  # neither stage imports the estimate
        (copy / "stages" / "rl.py").write_text((copy / "stages" / "rl.py").read_text() + "\n# an edit\n")
        rl, sft = versions()
        assert rl != before[0] and sft == before[1]  # the RL stage's module: the RL stages only
        (tmp_path / "constraints.txt").write_text("torch==2.14.0\n")
        assert all(a != b for a, b in zip(versions(), (rl, sft)))  # the lock file: every stage
    finally:
        monkeypatch.undo()
        cache.code_version.cache_clear()
        cache.stage_modules.cache_clear()


def test_status_explain_shows_what_a_stage_key_is_made_of(micro_home):
    home, _ = micro_home
    out = r1flow(["status", "first", "--explain", "r1_zero"], home, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "stage r1_zero of run 'first'" in text and "cache key" in text
    assert "input    policy = " in text and "unchanged" in text and "r1flow/grpo/loss.py" in text
    refused = r1flow(["status", "first", "--explain", "nope"], home, timeout=300)
    assert refused.returncode == 2 and "nope" in refused.stderr
