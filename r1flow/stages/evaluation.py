"""The evaluation stage: one model artifact on the configured benchmarks (paper §3: pass@1 over
k samples at T 0.6 / top-p 0.95, and cons@k), outside any pipeline run.

It is what the nightly evaluation of the registered model runs, and what a user runs on any
artifact (``r1flow evaluate MODEL``). Its output holds ``eval.json`` (the metrics and the
template used) and ``model.json`` (which artifact was evaluated, by URI and digest) — never a
copy of the model. The cache key covers the model's digest and the evaluation settings, so the
same model under the same settings is evaluated once.

Each batch of samples is saved as it completes (``r1flow.chunks``), so a killed evaluation resumes,
and ``launch.shards`` = N splits the batches over N runs (locally, or N flow runs on the GPU pool)
before the merging run scores them all: the same metrics for any N.
"""

from __future__ import annotations

import json

from r1flow.config import EvaluationConfig
from r1flow.stages.common import evaluate, load_policy, model_dir
from r1flow.stages.runner import StageContext, UserError

Config = EvaluationConfig


def check(ctx: StageContext) -> None:
    if "model" not in ctx.inputs:
        raise UserError("stage evaluation needs input 'model' (a model artifact's URI)")
    model_dir(ctx.inputs["model"], ctx.config.which)


def template_of(ctx: StageContext) -> str:
    """The configured template, else the one the model's own stage evaluated with, else ``boxed``
    for a model r1flow did not train (a hub id, folder or mirror: plain chain of thought, as its
    published pass@1 is measured), else ``r1``."""
    if ctx.config.template:
        return ctx.config.template
    recorded = ctx.inputs["model"] / "eval.json"
    if recorded.exists():
        return json.loads(recorded.read_text()).get("template", "r1")
    return "boxed" if (model_dir(ctx.inputs["model"], ctx.config.which) / "source.json").exists() else "r1"


def run(ctx: StageContext) -> None:
    ref = ctx.spec.inputs["model"]
    template = template_of(ctx)
    model, tokenizer = load_policy(ctx.inputs["model"], ctx, which=ctx.config.which)
    ctx.log(f"evaluating {ref.uri} ({ref.meta.get('stage', 'model')}) with template {template}")
    ctx.write_json("model.json", {"uri": ref.uri, "digest": ref.digest, "stage": ref.meta.get("stage", ""),
                                  "which": ctx.config.which})
    ctx.set_tags(**{"r1flow.evaluated_uri": ref.uri, "r1flow.evaluated_digest": ref.digest})
    evaluate(ctx, model, tokenizer, template, save_chunks=True)
    if ctx.spec.shard:
        ctx.log(f"evaluation shard {ctx.spec.shard[0] + 1} of {ctx.spec.shard[1]}: its samples are saved")
