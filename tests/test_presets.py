"""Every preset loads and validates; the real-model presets keep the paper's settings, pass
preflight once their problem files exist, and get a GPU-hours estimate checked by hand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from r1flow.config import load_config, presets
from r1flow.estimate import Assumptions, estimate, model_params

REAL = [p for p in presets() if p not in ("micro", "tiny")]
SHARED = os.environ.get("R1FLOW_SHARED_DATA", "/work/shared/data")
needs_shared = pytest.mark.skipif(not Path(SHARED).is_dir(), reason="shared benchmark data not present")


def on_shared_data(preset: str):
    """The preset with its data/ problem files read from the shared copies of GSM8K and MATH-500."""
    text = load_config(preset).model_dump_json()
    return load_config(preset, sets=[]).model_validate_json(text.replace('=data/', f'={SHARED}/'))


def test_every_preset_loads_and_the_real_ones_exist():
    assert {"micro", "tiny"} <= set(presets()) and REAL, presets()
    for preset in presets():
        assert load_config(preset).preset == preset


def test_a_preset_extends_another_and_a_loop_is_refused(tmp_path, monkeypatch):
    from r1flow import config

    llama = load_config("r1-distill-llama-8b")
    assert llama.base.student.source == "meta-llama/Llama-3.1-8B"
    assert llama.base.teacher.source == load_config("qwen2.5-math-7b").base.teacher.source  # inherited
    assert llama.distill.train.micro_batch_size == 4 and llama.distill.launch.strategy == "fsdp"
    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    monkeypatch.setattr(config, "CONFIG_DIRS", [tmp_path])
    with pytest.raises(config.ConfigError, match="extends itself: a -> b -> a"):
        load_config("a")


@needs_shared
@pytest.mark.parametrize("preset", REAL)
def test_real_presets_keep_the_papers_settings_and_pass_preflight(preset, tmp_path, hub_cache):
    from r1flow.config import ConfigError
    from r1flow.preflight import preflight

    c = load_config(preset)
    assert (c.device, c.dtype) == ("cuda", "bfloat16")
    assert all("/" in s.source and not s.source.startswith((".", "/")) for s in (c.base.teacher, c.base.student))
    assert not c.base.teacher.trust_remote_code and not c.base.student.trust_remote_code
    assert (c.evaluate.temperature, c.evaluate.top_p) == (0.6, 0.95)
    for stage in ("r1_zero", "reasoning_rl", "final_rl"):
        g = c.section(stage).grpo
        assert (g.beta, g.group_size, g.temperature) == (0.001, 16, 1.0), stage
    assert c.sft.train.epochs == 2 and c.distill.model == "student"
    assert {b.split("=")[0] for b in c.evaluate.benchmarks} == {"gsm8k", "math500"}
    assert {r.name for r in c.reasoning_rl.prompts[0].rewards} == {"accuracy", "format", "language"}
    cached = {p.name.removeprefix("models--").replace("--", "/") for p in hub_cache.iterdir()}
    sources = {"base.teacher": ("base", c.base.teacher.source), "base.student": ("base", c.base.student.source),
               "reward_model": ("reward_model", c.reward_model.source)}
    missing = {field: stage for field, (stage, source) in sources.items() if source and source not in cached}
    pinned = preflight(on_shared_data(preset), str(tmp_path / "store"),
                       tuple(s for s in c.stage_names() if s not in missing.values()))
    for stage in set(missing.values()):  # offline, a hub id outside the cache is refused by name at once
        fields = "|".join(f for f, s in missing.items() if s == stage)
        with pytest.raises(ConfigError, match=f"({fields}).source: .*not in the hub cache"):
            preflight(on_shared_data(preset), str(tmp_path / "store"), (stage,))
    if "base.teacher" not in missing and "base.student" not in missing:
        assert pinned.base.teacher.resolved and pinned.base.student.resolved
    assert all(v > 1e8 for v in model_params(c).values())


def test_gpu_hours_estimate_against_hand_values():
    c = load_config("micro", sets=["evaluate.max_problems=10", "evaluate.k=2", "evaluate.max_new_tokens=100",
                                   "distill.train.max_steps=0", "distill.train.epochs=2",
                                   "r1_zero.grpo={steps: 10, prompts_per_step: 2, group_size: 4, max_new_tokens: 50}"])
    a = Assumptions(gpu="A100", gpus=2, train_mfu=0.5, generate_mfu=0.1, fill=0.5, prompt_tokens=25, kept=0.5)
    rows = {r.stage: r for r in estimate(c, {"teacher": 1_000, "student": 100}, a)}
    evaluation = 2 * 1_000 * 10 * 2 * (25 + 50)          # 2N · problems · k · (prompt + half of 100)
    per_step = 8 * (25 + 25)                              # 8 rows of 25 prompt + 25 generated tokens
    r1_zero = rows["r1_zero"]
    assert r1_zero.generate_flops == 2 * 1_000 * per_step * 10 + 2 * evaluation  # evaluated at start and end
    assert r1_zero.train_flops == 6 * 1_000 * per_step * 10   # micro's R1-Zero keeps no reference (beta 0)
    peak = 312e12  # GPU-hours: one A100's sustained rate (the 2 GPUs share them: half as many wall hours)
    assert r1_zero.gpu_hours == pytest.approx((r1_zero.generate_flops / (peak * 0.1)
                                               + r1_zero.train_flops / (peak * 0.5)) / 3600)
    c.r1_zero.launch.processes = 2  # prompts_per_step is per rank: two ranks train on twice the rows
    assert {r.stage: r for r in estimate(c, {"teacher": 1_000, "student": 100}, a)}["r1_zero"].train_flops == \
        2 * r1_zero.train_flops
    rs = c.rejection_sampling                             # distill: 6 · N_student · kept rows · tokens · epochs
    rows_kept = 0.5 * rs.num_prompts * rs.samples_per_prompt / (1 - rs.non_reasoning_fraction)
    tokens = 25 + round(0.5 * rs.max_new_tokens)
    assert rows["distill"].train_flops == 6 * 100 * round(rows_kept * c.distill.train.epochs * tokens)
    sft = c.sft.train                                      # micro's SFT is capped by max_steps, not epochs
    assert sft.max_steps and rows["sft"].train_flops == 6 * 1_000 * sft.max_steps * sft.batch_size * tokens


def test_the_7b_preset_trains_sharded_on_eight_gpus_with_the_papers_batch():
    c = load_config("qwen2.5-math-7b")
    assert model_params(c) == {"teacher": 7_070_619_136, "student": 1_543_714_304}
    for stage in ("r1_zero", "cold_start", "reasoning_rl", "final_rl", "sft", "distill"):
        launch = c.section(stage).launch
        assert (launch.processes, launch.machines, launch.strategy) == (8, 1, "fsdp"), stage
    for stage in ("r1_zero", "reasoning_rl", "final_rl"):  # per rank: 4 questions × 8 ranks = 32 per step
        assert c.section(stage).grpo.prompts_per_step * c.section(stage).launch.processes == 32
    assert c.rejection_sampling.launch.shards == c.evaluation.launch.shards == 8
