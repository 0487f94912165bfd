"""The memory plan (``r1flow.memory_plan``) against measurement: the CPU allocator's peak over one
real SFT step and one real GRPO step (torch's memory profiler timeline) for two shrunk
real-architecture configs — Qwen2.5-Math-1.5B's and SmolLM2's (Llama), the real vocabulary —
within 25% of the plan's formula at fp32's 4 bytes per element. Then the real presets fit their
GPU, and a config that does not is refused by stage and part."""

from __future__ import annotations

import json

import pytest
import torch

from r1flow.config import ConfigError, load_config
from r1flow.memory_plan import GB, Shape, grpo_step, model_shapes, plan, sft_step
from tests.conftest import SHARED_DATA

CONFIGS = ["Qwen--Qwen2.5-Math-1.5B",  # the Llama-architecture measurements run in make test-slow
           pytest.param("HuggingFaceTB--SmolLM2-135M-Instruct", marks=pytest.mark.slow)]
SHRUNK = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=384, head_dim=32, max_window_layers=3)


def _peak_bytes(fn) -> int:
    """The largest total of live CPU tensors while ``fn`` runs (parameters, gradients, optimizer
    state and temporaries alike), from torch's memory profiler timeline."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as p:
        fn()
    _, sizes = MemoryProfileTimeline(p._memory_profile())._coalesce_timeline(torch.device("cpu"))
    return max(sum(s) for s in sizes)


@pytest.fixture(scope="module", params=CONFIGS)
def real(request, tmp_path_factory):
    from transformers import AutoConfig

    from r1flow.loading import load_tokenizer

    folder = SHARED_DATA / "hub" / request.param
    if not folder.is_dir():
        pytest.skip(f"no real configs here: {folder}")
    values = {**json.loads((folder / "config.json").read_text()), **SHRUNK}
    dest = tmp_path_factory.mktemp("shape")
    (dest / "config.json").write_text(json.dumps(values))
    return AutoConfig.from_pretrained(dest), Shape.of(values), load_tokenizer(str(folder))


def _model(config):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def test_the_parameter_count_is_the_models(real):
    config, shape, _ = real
    assert shape.params == sum(p.numel() for p in _model(config).parameters())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_one_sft_step_peaks_within_a_quarter_of_the_plan(real, checkpointing):
    from r1flow.train.sft import SFTParams, train_sft

    config, shape, tok = real
    examples = [{"prompt": f"What is {i} + 2? ", "completion": " word" * 300} for i in range(4)]
    params = SFTParams(max_steps=1, batch_size=4, max_len=256, min_shared_prefix=0,
                       gradient_checkpointing=checkpointing)
    measured = _peak_bytes(lambda: train_sft(_model(config), tok, examples, params))
    planned = sum(sft_step(shape, 4, 256, 4, checkpointing).values())
    assert abs(measured - planned) <= 0.25 * planned, (measured / 1e6, planned / 1e6)


@pytest.mark.slow  # 30 s of profiling: make test-slow (the SFT measurements stay in the default run)
def test_one_grpo_step_peaks_within_a_quarter_of_the_plan(real):
    from r1flow.grpo.params import GRPOParams
    from r1flow.grpo.rewarding import completion_reward
    from r1flow.grpo.trainer import train_grpo

    config, shape, tok = real
    prompts = [{"prompt": f"What is {i} + 2? ", "gold": "1", "source": "t"} for i in range(8)]
    params = GRPOParams(steps=1, prompts_per_step=2, group_size=4, max_new_tokens=64, micro_batch_size=4, beta=0.01)
    reward = [("length", 1.0, completion_reward(lambda c, g: [len(x) / 100 for x in c]))]
    measured = _peak_bytes(lambda: train_grpo(_model(config), tok, prompts, reward, params))
    prompt = max(len(tok(p["prompt"])["input_ids"]) for p in prompts)
    planned = sum(grpo_step(shape, 4, prompt, 64, 4, False, reference=True).values())
    assert abs(measured - planned) <= 0.25 * planned, (measured / 1e6, planned / 1e6)


def test_the_real_presets_fit_their_gpu_and_an_oversized_one_is_refused_by_stage_and_part(tmp_path):
    from r1flow.memory_plan import refusal
    from r1flow.preflight import preflight

    for preset in ("qwen2.5-math-1.5b", "qwen2.5-math-7b", "r1-distill-llama-8b"):
        config = load_config(preset)
        peaks = {p.stage: p.peak / GB for p in plan(config, model_shapes(config))}
        assert max(peaks.values()) + 3 < config.gpu_memory_gb, (preset, peaks)
        assert refusal(config, config.stage_names()) is None
    big = load_config("qwen2.5-math-1.5b", sets=["reasoning_rl.grpo.gradient_checkpointing=false",
                                                 "reasoning_rl.grpo.micro_batch_size=16"])
    why = refusal(big, big.stage_names())
    assert why.startswith("reasoning_rl: ") and "the largest part is activations" in why
    assert "gradient_checkpointing" in why
    with pytest.raises(ConfigError, match="gpu_memory_gb: reasoning_rl"):
        preflight(big, str(tmp_path / "store"), ("reasoning_rl",))


def test_r1flow_estimate_prints_the_plan_as_json_per_stage(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO, cli_env

    out = subprocess.run([sys.executable, "-m", "flows.cli", "estimate", "--preset", "qwen2.5-math-1.5b", "--format",
                          "json"], cwd=REPO, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    stages = {row["stage"]: row for row in json.loads(out.stdout)}
    planned = {s: row for s, row in stages.items() if "peak_gpu_memory_gb" in row}
    assert set(planned) == {"r1_zero", "reasoning_rl", "final_rl", "cold_start", "sft", "distill", "rejection_sampling"}
    for row in planned.values():
        assert 0 < row["peak_gpu_memory_gb"] < 80 and row["gpu_hours"] > 0
        assert row["peak_gpu_memory_gb"] <= sum(row["parts_gb"].values()) + 0.05
