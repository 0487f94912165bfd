"""Stage 3 (paper §2.3.3): rejection sampling from the reasoning-RL checkpoint.

k samples per reasoning prompt, in seeded chunks saved as they complete (``r1flow.chunks``: a
killed stage resumes without duplicated or missing samples); keep correct ones and drop mixed-language chains of thought,
long paragraphs, code blocks and truncated outputs (``r1flow.data.curate.rejection_filter``; answers
graded under a deadline, overruns counted as ``grading_timeouts``);
mix in non-reasoning SFT rows when configured (answered without a chain of thought, as the paper
does for simple queries); write the SFT dataset and log how many rows each filter removed.

Sharded (``launch.shards`` = N): runs i = 0..N-1 each generate the chunks c with c mod N = i and
save them; the merging run then finds every chunk saved, generates none, and filters and writes
exactly what one run would have — a chunk's rows depend only on its index, not on who made it.
"""

from __future__ import annotations

from r1flow.config import RejectionConfig
from r1flow.stages.common import load_policy, problems, sample_rows, sampling_engine, write_dataset
from r1flow.stages.runner import StageContext

Config = RejectionConfig


def check(ctx: StageContext) -> None:
    if "policy" not in ctx.inputs:
        raise ValueError("stage rejection_sampling needs input 'policy'")
    if ctx.spec.shard and not ctx.config.checkpoint_chunks:
        raise ValueError("rejection_sampling.launch.shards > 1 needs checkpoint_chunks: shards hand over saved chunks")
    if ctx.config.prompts != "arith":
        problems(ctx, ctx.config.prompts, 1, 0)  # a missing or malformed file fails here, named


def run(ctx: StageContext) -> None:
    from r1flow.data.curate import mix_non_reasoning, rejection_filter
    from r1flow.data.preferences import load_nonreasoning
    from r1flow.templates import render_prompt

    cfg: RejectionConfig = ctx.config
    seed = int(ctx.runtime.get("seed", 0))
    model, tokenizer = load_policy(ctx.inputs["policy"], ctx)
    prompts = problems(ctx, cfg.prompts, cfg.num_prompts, seed + 202)
    ctx.tracker.log_dataset("prompts", prompts, context="generation", source=str(cfg.prompts))
    chunks = ctx.chunk_log() if cfg.checkpoint_chunks else None
    engine, engine_kw = sampling_engine(ctx, ctx.inputs["policy"], cfg.engine)
    samples = sample_rows(model, tokenizer, prompts, template="r1", k=cfg.samples_per_prompt,
                          temperature=cfg.temperature, top_p=cfg.top_p,
                          max_new_tokens=cfg.max_new_tokens, seed=seed, engine=engine, engine_kw=engine_kw,
                          chunk_prompts=cfg.chunk_prompts, chunks=chunks, shard=ctx.spec.shard,
                          on_chunk=ctx.fault_point)
    if chunks and chunks.loaded:
        ctx.log(f"rejection sampling: reused {chunks.loaded} saved chunk(s) of {cfg.chunk_prompts} prompts")
    if ctx.spec.shard:  # the merging run filters all chunks together and publishes
        ctx.log(f"rejection sampling shard {ctx.spec.shard[0] + 1} of {ctx.spec.shard[1]}: {len(samples)} samples saved")
        return
    kept, removed = rejection_filter(samples, cfg.filters)
    if len(kept) < cfg.min_kept:
        raise RuntimeError(f"rejection sampling kept {len(kept)} of {len(samples)} samples, fewer than "
                           f"rejection_sampling.min_kept={cfg.min_kept} ({removed})")
    general = [{"prompt": render_prompt(r["prompt"], "r1"), "completion": " </think> " + r["response"]}
               for r in load_nonreasoning()]
    if kept:
        data = mix_non_reasoning(kept, general, cfg.non_reasoning_fraction, seed)
    else:  # only where min_kept is 0 (smoke presets whose policy solves nothing yet)
        ctx.log("rejection sampling kept no sample: the dataset is the non-reasoning rows alone")
        data = general
    timeouts = removed.grading_timeouts  # answers whose grading overran: removed as incorrect
    ctx.tracker.log_metrics({"samples": len(samples), "kept": len(kept), "dataset": len(data),
                             "accept_rate": len(kept) / len(samples), "grading_timeouts": timeouts,
                             **{f"removed/{k}": v for k, v in removed.items()}}, 0)
    ctx.log(f"rejection sampling: kept {len(kept)} of {len(samples)}; removed {removed}; "
            f"{timeouts} answer(s) timed out in grading (counted incorrect)")
    write_dataset(ctx, data)
    ctx.write_json("filters.json", {"samples": len(samples), "kept": len(kept), "removed": removed,
                                    "grading_timeouts": timeouts})
    ctx.tracker.log_table(data[:32], "sft_examples")
