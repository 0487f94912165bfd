"""Stage 1 (paper §2.3.1): cold-start data, then SFT of the base on it.

Long-CoT rows come from the configured sources — samples of the R1-Zero model (the ``tiny``
preset, as the paper does) or JSONL files of ``{question, answer, completion}`` — and are curated
(``r1flow.data.curate``: correct, well-formed, single-language, length-bounded, deduplicated,
decontaminated against every evaluation set) into the readable format (reasoning, then a
summary) under the R1 template; answers are graded under a deadline (an overrun is incorrect and
counted: the ``grading_timeouts`` metric). The base teacher is then fine-tuned on them. On several
ranks, rank 0 samples and curates once and shares the rows; SFT runs data-parallel or fully sharded.
"""

from __future__ import annotations

from pathlib import Path

from r1flow.config import ColdStartConfig
from r1flow.ranks import from_rank_zero
from r1flow.stages.common import (
    eval_questions,
    evaluate,
    load_policy,
    problems,
    sample_rows,
    sampling_engine,
    save_policy,
    train_sft_stage,
    write_dataset,
)
from r1flow.stages.runner import StageContext

Config = ColdStartConfig


def check(ctx: StageContext) -> None:
    from r1flow.data.curate import SOURCE_FIELDS
    from r1flow.data.io import read_jsonl

    for src in ctx.config.sources:
        if src == "r1_zero":
            if "zero" not in ctx.inputs:
                raise ValueError("cold_start.sources names 'r1_zero' but no R1-Zero model was given")
        else:
            read_jsonl(src, SOURCE_FIELDS)
    if "base" not in ctx.inputs:
        raise ValueError("stage cold_start needs input 'base'")
    if "r1_zero" in ctx.config.sources and ctx.config.prompts != "arith":
        problems(ctx, ctx.config.prompts, 1, 0)  # a missing or malformed file fails here, named


def run(ctx: StageContext) -> None:
    cfg: ColdStartConfig = ctx.config
    examples = from_rank_zero(curated(ctx) if ctx.rank == 0 else None)  # several ranks: sampled once
    model, tokenizer = load_policy(ctx.inputs["base"], ctx)
    model, final = train_sft_stage(ctx, model, tokenizer, examples, cfg.train)
    if model is None:  # a rank other than 0: rank 0 alone saves and evaluates
        return
    save_policy(model, tokenizer, ctx)
    evaluate(ctx, model, tokenizer, "r1", step=int(final.get("steps", 0)))


def curated(ctx: StageContext) -> list[dict]:
    """Long-CoT rows sampled from R1-Zero (and read from files), curated; written as the stage's dataset."""
    from r1flow.data.curate import SOURCE_FIELDS, curate
    from r1flow.data.io import read_jsonl

    cfg: ColdStartConfig = ctx.config
    seed = int(ctx.runtime.get("seed", 0))
    rows = []
    for src in cfg.sources:
        start = len(rows)
        if src == "r1_zero":
            zero, tok = load_policy(ctx.inputs["zero"], ctx)
            prompts = problems(ctx, cfg.prompts, cfg.num_prompts, seed + 101)
            engine, engine_kw = sampling_engine(ctx, ctx.inputs["zero"])
            rows += sample_rows(zero, tok, prompts, template="r1_zero", k=cfg.samples_per_prompt,
                                temperature=cfg.temperature, top_p=1.0, max_new_tokens=cfg.max_new_tokens,
                                seed=seed, engine=engine, engine_kw=engine_kw)
            del zero
        else:
            rows += read_jsonl(src, SOURCE_FIELDS)
        ctx.tracker.log_dataset(f"cold_start_source/{Path(src).name}", rows[start:], context="training",
                                source=ctx.spec.inputs["zero"].uri if src == "r1_zero" else src)
    examples, removed = curate(rows, eval_questions(ctx), cfg.curation)
    ctx.tracker.log_metrics({"rows": len(rows), "kept": len(examples),
                             "grading_timeouts": removed.grading_timeouts,
                             **{f"removed/{k}": v for k, v in removed.items()}}, 0)
    ctx.log(f"cold start: kept {len(examples)} of {len(rows)} rows; removed {removed}; "
            f"{removed.grading_timeouts} answer(s) timed out in grading (counted incorrect)")
    if not examples:
        raise RuntimeError(f"cold-start curation kept no example out of {len(rows)} ({removed})")
    write_dataset(ctx, examples)
    ctx.tracker.log_table(examples[:32], "cold_start_examples")
    return examples
