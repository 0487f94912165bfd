"""Bad input fails before expensive work, with a message naming the input, leaving nothing behind."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from r1flow.launcher import EXIT_INPUT_ERROR
from tests.conftest import r1flow
from tests.s3server import free_port


def _no_artifacts(home):
    store = home / "store"
    return not store.exists() or not any(store.rglob("manifest.json"))


@pytest.mark.parametrize("content, message", [
    ("", "empty"),
    ('{"question": "1 + 2", "answer": "3"}\n', ":1: missing field 'completion'"),
    ('{"question": "1 + 2", "answer": 3, "completion": "x"}\n', ":1: field 'answer'"),
    ('{"question": "1 + 2", "answer": "3", "completion": "x"}\nnot json\n', ":2: invalid JSON"),
])
def test_malformed_dataset_rows_name_file_and_line(tmp_path, content, message):
    data = tmp_path / "cot.jsonl"
    data.write_text(content)
    out = r1flow(["run", "--preset", "micro", "--set", f"cold_start.sources=[{data}]"], tmp_path / "home")
    assert out.returncode == EXIT_INPUT_ERROR, out.stdout + out.stderr
    assert "cold_start.sources.0" in out.stderr and str(data) in out.stderr
    assert message in out.stderr, out.stderr
    assert _no_artifacts(tmp_path / "home")


def test_unknown_reward_is_named(tmp_path):
    out = r1flow(["run", "--preset", "micro", "--set",
                  "final_rl.prompts=[{source: arith, rewards: [{name: helpfulness}]}]"], tmp_path)
    assert out.returncode == EXIT_INPUT_ERROR
    assert "final_rl.prompts.0.rewards.0.name" in out.stderr and "helpfulness" in out.stderr


def test_missing_model_path_is_named(tmp_path):
    out = r1flow(["run", "--preset", "micro", "--set", "base.teacher.source=/nonexistent/model"], tmp_path)
    assert out.returncode == EXIT_INPUT_ERROR
    assert "base.teacher.source" in out.stderr and "/nonexistent/model" in out.stderr


def test_invalid_preset_value_is_named(tmp_path):
    out = r1flow(["run", "--preset", "micro", "--set", "reasoning_rl.grpo.group_size=1"], tmp_path)
    assert out.returncode == EXIT_INPUT_ERROR
    assert "reasoning_rl.grpo.group_size" in out.stderr


def test_unreachable_s3_endpoint_fails_fast(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.time()
    out = r1flow(["run", "--preset", "micro", "--set", "store.root=s3://r1flow/runs",
                  "--set", f"store.s3_endpoint_url={endpoint}"], tmp_path,
                 AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    assert out.returncode == EXIT_INPUT_ERROR
    assert endpoint in out.stderr and "store.root" in out.stderr
    assert time.time() - started < 60


def test_stage_process_refuses_a_missing_input_with_exit_code_2(tmp_path):
    from r1flow.stages.runner import main
    from r1flow.store import ArtifactRef

    spec = {"stage": "sft", "config": {}, "output_key": "artifacts/sft/x", "store_root": str(tmp_path / "store"),
            "inputs": {"base": ArtifactRef(uri=(tmp_path / "store" / "nope").as_uri(), digest="0" * 64).model_dump(),
                       "data": ArtifactRef(uri=(tmp_path / "store" / "nada").as_uri(), digest="0" * 64).model_dump()}}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    assert main([str(path)]) == EXIT_INPUT_ERROR
    assert _no_artifacts(tmp_path)


def test_preflight_of_one_stage_checks_only_its_own_inputs(tmp_path):
    """A stage flow on a GPU pool checks its own stage's inputs, not a file another stage reads
    on another machine; the whole pipeline checks them all."""
    from r1flow.config import ConfigError, load_config
    from r1flow.preflight import preflight

    missing = str(tmp_path / "only-on-the-cpu-host.jsonl")
    config = load_config("micro", sets=[f"cold_start.sources=[{missing}]", f"base.teacher.source={tmp_path}/none"])
    for stages in (("sft",), ("reasoning_rl", "distill")):
        preflight(config, str(tmp_path / "store"), stages)
    for stages, field in ((("cold_start",), "cold_start.sources.0"), (("base",), "base.teacher.source"),
                          (None, "base.teacher.source")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            preflight(config, str(tmp_path / "store"), stages)


@pytest.mark.skipif(not Path(os.environ.get("R1FLOW_SHARED_DATA", "/work/shared/data")).is_dir(),
                    reason="shared benchmark data not present")
def test_problem_files_for_sampling_and_rl_are_checked_and_named(tmp_path):
    """Real problem files (GSM8K, MATH-500) feed R1-Zero, cold start and rejection sampling; a
    missing or malformed one is named with its file and line before any stage starts."""
    from r1flow.config import ConfigError, load_config
    from r1flow.preflight import preflight
    from r1flow.stages.common import problems

    shared = os.environ.get("R1FLOW_SHARED_DATA", "/work/shared/data")
    gsm8k, math500 = f"gsm8k={shared}/gsm8k/train.jsonl", f"math500={shared}/math500/test.jsonl"
    good = load_config("micro", sets=[f"r1_zero.prompts=[{{source: '{gsm8k}'}}]", f"cold_start.prompts={math500}",
                                      f"rejection_sampling.prompts={gsm8k}"])
    preflight(good, str(tmp_path / "store"))
    rows = problems(None, gsm8k, 3, seed=0)
    assert [r["answer"] for r in rows] == ["72", "10", "5"]  # GSM8K train's first golds, after '####'
    assert rows[0]["question"].startswith("Natalia sold clips to 48 of her friends")
    broken = tmp_path / "math.jsonl"
    broken.write_text('{"problem": "1 + 1?", "answer": "2"}\n{"problem": "2 + 2?"}\n')
    for sets, field in (([f"rejection_sampling.prompts=gsm8k={tmp_path}/none.jsonl"], "rejection_sampling.prompts"),
                        (["cold_start.prompts=nonreasoning"], "cold_start.prompts"),
                        ([f"cold_start.prompts=math500={broken}"], "cold_start.prompts"),
                        ([f"r1_zero.prompts=[{{source: 'math500={broken}'}}]"], "r1_zero.prompts.0.source")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as err:
            preflight(load_config("micro", sets=sets), str(tmp_path / "store"))
        assert any(x in str(err.value) for x in ("none.jsonl", f"{broken}:2", "'nonreasoning'")), str(err.value)
