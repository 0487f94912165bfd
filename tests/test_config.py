"""Configs: every shipped preset validates; overrides layer; invalid values name their field."""

from __future__ import annotations

import pytest

from r1flow.config import ConfigError, PipelineConfig, apply_set, load_config, presets


@pytest.mark.parametrize("preset", presets())
def test_every_preset_validates(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, PipelineConfig) and cfg.preset == preset


def test_presets_include_micro_and_tiny():
    assert {"micro", "tiny"} <= set(presets())


def test_set_overrides_nested_values():
    cfg = load_config("micro", sets=["reasoning_rl.grpo.lr=0.0002", "evaluate.k=3"])
    assert cfg.reasoning_rl.grpo.lr == 0.0002 and cfg.evaluate.k == 3


def test_invalid_value_names_the_field():
    with pytest.raises(ConfigError, match=r"reasoning_rl\.grpo\.lr"):
        load_config("micro", sets=["reasoning_rl.grpo.lr=-1"])


def test_unknown_field_and_reward_are_refused():
    with pytest.raises(ConfigError, match=r"sft\.train\.learning_rate"):
        load_config("micro", sets=["sft.train.learning_rate=0.1"])
    with pytest.raises(ConfigError, match="unknown reward 'helpfulness'"):
        load_config("micro", sets=["reasoning_rl.prompts=[{source: arith, rewards: [{name: helpfulness}]}]"])


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*micro"):
        load_config("huge")


def test_config_file_overrides_preset(tmp_path):
    f = tmp_path / "over.yaml"
    f.write_text("seed: 7\nsft: {train: {epochs: 3}}\n")
    cfg = load_config("micro", f)
    assert cfg.seed == 7 and cfg.sft.train.epochs == 3
    assert cfg.sft.train.max_steps == 10  # the preset's value survives the deep merge
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config("micro", bad)


def test_apply_set_parses_yaml_values():
    assert apply_set({}, "a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    with pytest.raises(ConfigError):
        apply_set({}, "no-equals-sign")


@pytest.mark.parametrize("sets,refusal", [
    (["rejection_sampling.launch.shards=2", "rejection_sampling.checkpoint_chunks=false"], "needs checkpoint_chunks"),
    (["sft.launch.shards=2"], "only these stages split their work into shards: rejection_sampling, evaluation"),
    (["rejection_sampling.launch.processes=2"], "only these stages run on several processes"),
    (["sft.launch.processes=2", "sft.launch.strategy=zero3"], "shards with PyTorch's FSDP2"),
    (["rejection_sampling.launch.strategy=fsdp"], "only these stages run on several processes, sharded or not"),
    (["reasoning_rl.vllm_sleep=true"], "sleep/wake is a vLLM feature on CUDA"),
    (["r1_zero.engine=vllm", "r1_zero.launch.processes=2"], "engine vllm on several processes is not supported"),
    (["evaluation.launch.shards=2", "evaluate.tensor_parallel_size=2"], r"a shard takes one GPU \(evaluate"),
    (["reasoning_rl.vllm_sleep=true", "reasoning_rl.engine=vllm"], "sleep/wake is a vLLM feature on CUDA"),
])
def test_scale_out_settings_that_cannot_work_are_refused_by_name(sets, refusal):
    with pytest.raises(ConfigError, match=refusal):
        load_config("micro", sets=sets)


def test_scale_out_settings_that_work_are_accepted():
    c = load_config("micro", sets=["sft.launch.processes=2", "sft.launch.strategy=fsdp", "distill.launch.machines=2",
                                   "reasoning_rl.launch.processes=8", "reasoning_rl.launch.strategy=fsdp",
                                   "evaluation.launch.shards=3", "evaluate.engine=vllm"])
    assert (c.sft.launch.strategy, c.distill.launch.machines, c.evaluation.launch.shards) == ("fsdp", 2, 3)
