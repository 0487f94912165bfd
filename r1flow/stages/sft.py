"""Stages 4 and 6: SFT of a base model on the rejection-sampled data (paper §2.3.3: two epochs,
loss on completion tokens only) and distillation of a student (§2.4) — the same code, another
config (``model: student``). With ``launch.strategy: fsdp`` on several processes the model trains
fully sharded (``r1flow.sharding``) — what a 7B full fine-tune needs."""

from __future__ import annotations

from r1flow.config import SFTConfig
from r1flow.stages.common import (
    evaluate,
    load_policy,
    save_policy,
    sft_examples_from,
    train_sft_stage,
)
from r1flow.stages.runner import StageContext

Config = SFTConfig


def check(ctx: StageContext) -> None:
    for name in ("base", "data"):
        if name not in ctx.inputs:
            raise ValueError(f"stage {ctx.spec.stage} needs input {name!r}")
    sft_examples_from(ctx.inputs["data"])  # validates every row before training starts


def run(ctx: StageContext) -> None:
    cfg: SFTConfig = ctx.config
    examples = sft_examples_from(ctx.inputs["data"])
    ctx.tracker.log_dataset("rejection_sampling/sft.jsonl", examples, context="training",
                            source=ctx.spec.inputs["data"].sub("sft.jsonl"))
    model, tokenizer = load_policy(ctx.inputs["base"], ctx, which=cfg.model)
    ctx.log(f"SFT of the {cfg.model} base on {len(examples)} examples")
    model, final = train_sft_stage(ctx, model, tokenizer, examples, cfg.train)
    if model is None:  # a rank other than 0: rank 0 alone saves and evaluates
        return
    save_policy(model, tokenizer, ctx)
    ctx.write_json("train.json", {"examples": len(examples), **final})
    evaluate(ctx, model, tokenizer, "r1", step=int(final.get("steps", 0)))
