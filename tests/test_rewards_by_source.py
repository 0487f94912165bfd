"""Reward routing in the RL stages (paper §2.3.4: each prompt source brings its own rewards).

The same question can sit in two sources (a math set and a general set) with different golds and
reward functions. Both render to the same prompt text, so rows must be routed by a key of their
own (source, row index) that travels with each rollout row through the trainer, not by text.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from r1flow.grpo.rewarding import keyed, score_batch
from r1flow.modeling import ModelArch, build_model, train_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUESTION = "What is 2 + 2 ?"
GOLDS = {"alpha": "4", "beta": "5"}  # the same question, a different gold in each source


def test_each_source_scores_its_own_rows_in_a_real_rl_stage(tmp_path, capsys):
    """The reasoning-RL stage run for real (``run_spec``, a local store, a tiny base) on two problem
    files holding the same question: each source's reward function is applied to its own rows.
    Keyed by prompt text, the second source took every row and the first one's reward scored none."""
    import json

    from r1flow.config import load_config
    from r1flow.events import parse
    from r1flow.modeling import save_model
    from r1flow.stages.runner import StageSpec, run_spec
    from r1flow.store import open_store

    tok = train_tokenizer(["What is 2 + 4 5 ? <think> </think> The answer boxed"] * 20, 280)
    model = build_model(ModelArch(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                  intermediate_size=64), tok, seed=0)
    save_model(model, tok, tmp_path / "base" / "teacher")
    store = open_store(str(tmp_path / "store"))
    base = store.put_dir(tmp_path / "base", "artifacts/base/t", meta={"stage": "base"})
    files = {}
    for name, gold in GOLDS.items():
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text(json.dumps({"question": QUESTION, "answer": gold}) + "\n")
    prompts = [{"source": str(files["alpha"]), "num_prompts": 1, "rewards": [{"name": "format"}]},
               {"source": str(files["beta"]), "num_prompts": 1, "rewards": [{"name": "language"}]}]
    cfg = load_config("micro", sets=["reasoning_rl.grpo={steps: 1, prompts_per_step: 2, group_size: 2, "
                                     "max_new_tokens: 4}"])
    section = {**cfg.reasoning_rl.model_dump(mode="json"), "prompts": prompts}
    runtime = {**cfg.shared(), "evaluate": {**cfg.evaluate.model_dump(), "max_problems": 1, "k": 1,
                                            "max_new_tokens": 2}}
    run_spec(StageSpec(stage="reasoning_rl", config=section, runtime=runtime, inputs={"policy": base},
                       output_key="artifacts/reasoning_rl/t", store_root=str(tmp_path / "store"),
                       work_root=str(tmp_path / "work")))
    (step,) = [e["values"] for e in map(parse, capsys.readouterr().out.splitlines())
               if e and e["event"] == "metrics" and "reward/mean" in e["values"]]
    from r1flow.data.benchmarks import benchmark_name

    assert math.isfinite(step[f"reward/{benchmark_name(str(files['alpha']))}/format/mean"])
    assert math.isfinite(step[f"reward/{benchmark_name(str(files['beta']))}/language/mean"])


def test_score_batch_gives_keys_to_keyed_rewards_only():
    seen = []

    @keyed
    def by_key(prompts, completions, golds, *, keys):
        seen.append(list(keys))
        return [float(k == "b#0") for k in keys]

    specs = [("keyed", 1.0, by_key), ("plain", 1.0, lambda p, c, g: [0.5] * len(c))]
    scores = score_batch(specs, ["same", "same"], ["x", "y"], ["1", "1"], keys=["a#0", "b#0"])
    assert seen == [["a#0", "b#0"]] and scores.total.tolist() == [0.5, 1.5]
    with pytest.raises(ValueError, match="keyed.*key"):
        score_batch(specs, ["same"], ["x"], ["1"])
    with pytest.raises(ValueError, match="keys"):
        score_batch(specs, ["same"], ["x"], ["1"], keys=["a#0", "b#0"])
    assert torch.equal(score_batch(specs[1:], ["p"], ["x"], ["1"]).total, torch.tensor([0.5]))
