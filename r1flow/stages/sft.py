"""Stages 4 and 6: SFT of a base model on the rejection-sampled data (paper §2.3.3: two epochs,
loss on completion tokens only) and distillation of a student (§2.4) — the same code, another
config (``model: student``). With ``launch.strategy: fsdp`` on several processes the model trains
fully sharded (``r1flow.sharding``) — what a 7B full fine-tune needs."""

from __future__ import annotations

from r1flow.config import SFTConfig
from r1flow.ranks import rank_world
from r1flow.sharding import shard, unsharded
from r1flow.stages.common import evaluate, load_policy, save_policy, sft_examples_from
from r1flow.stages.runner import StageContext

Config = SFTConfig


def check(ctx: StageContext) -> None:
    for name in ("base", "data"):
        if name not in ctx.inputs:
            raise ValueError(f"stage {ctx.spec.stage} needs input {name!r}")
    sft_examples_from(ctx.inputs["data"])  # validates every row before training starts


def run(ctx: StageContext) -> None:
    from r1flow.train.sft import train_sft

    cfg: SFTConfig = ctx.config
    examples = sft_examples_from(ctx.inputs["data"])
    ctx.tracker.log_dataset("rejection_sampling/sft.jsonl", examples, context="training",
                            source=ctx.spec.inputs["data"].sub("sft.jsonl"))
    model, tokenizer = load_policy(ctx.inputs["base"], ctx, which=cfg.model)
    sharded = cfg.launch.strategy == "fsdp" and rank_world()[1] > 1
    if sharded:  # parameters, gradients and optimizer state split over the ranks (r1flow.sharding)
        shard(model)
    ctx.log(f"SFT of the {cfg.model} base on {len(examples)} examples")
    final = train_sft(model, tokenizer, examples, cfg.train, ctx.tracker, on_step=lambda s: ctx.fault_point(s.step),
                      checkpoints=ctx.checkpointer())
    if sharded:  # the whole trained model on rank 0, for saving and evaluation; the others are done
        model = unsharded(model)
        if model is None:
            return
    save_policy(model, tokenizer, ctx)
    ctx.write_json("train.json", {"examples": len(examples), **final})
    evaluate(ctx, model, tokenizer, "r1", step=int(final.get("steps", 0)))
