"""A reward model for general (non-reasoning) prompts, used by the final RL stage (paper §2.3.4).

CPU presets train a Bradley–Terry ``Qwen2ForSequenceClassification`` on synthetic preference
pairs (``r1flow.data.preferences``) with the base tokenizer; the stage fails if its held-out pair
accuracy is below ``min_accuracy`` — no random reward head reaches the RL stage.
"""

from __future__ import annotations

from r1flow.config import RewardModelConfig
from r1flow.stages.common import model_dir, setup_torch
from r1flow.stages.runner import StageContext

Config = RewardModelConfig


def check(ctx: StageContext) -> None:
    if "base" not in ctx.inputs:
        raise ValueError("stage reward_model needs input 'base' (for its tokenizer)")


def run(ctx: StageContext) -> None:
    from transformers import AutoTokenizer

    from r1flow.data.preferences import preference_pairs
    from r1flow.train.reward_model import train_reward_model

    cfg: RewardModelConfig = ctx.config
    setup_torch(ctx)
    seed = int(ctx.runtime.get("seed", 0))
    tokenizer = AutoTokenizer.from_pretrained(model_dir(ctx.inputs["base"]))
    train_pairs = preference_pairs(cfg.train_pairs, seed)
    eval_pairs = preference_pairs(cfg.eval_pairs, seed + 10_000)
    ctx.tracker.log_dataset("preference_pairs/train", train_pairs, context="training", source="synthetic")
    ctx.tracker.log_dataset("preference_pairs/eval", eval_pairs, context="evaluation", source="synthetic")
    model, metrics = train_reward_model(tokenizer, cfg.arch, train_pairs, eval_pairs, cfg.train, ctx.tracker)
    accuracy = metrics["eval_accuracy"]
    ctx.tracker.log_metrics({"accuracy": accuracy}, cfg.train.steps)
    if accuracy < cfg.min_accuracy:
        raise RuntimeError(f"reward model held-out pair accuracy {accuracy:.3f} < "
                           f"reward_model.min_accuracy {cfg.min_accuracy}")
    model.save_pretrained(ctx.workdir / "model")
    tokenizer.save_pretrained(ctx.workdir / "model")
    ctx.write_json("metrics.json", metrics)
