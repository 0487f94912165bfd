"""The GRPO stages: R1-Zero (paper §2.2), reasoning-oriented RL (§2.3.2) and RL for all
scenarios (§2.3.4) — one stage module, three configs.

Each prompt source brings its own reward functions (rule rewards for verifiable prompts, a
model-based reward for general ones), so a rollout batch can mix both as §2.3.4 describes.
The held-out evaluation runs at step 0 and at the end (and every ``eval_every`` steps), in this
process, so the stage's MLflow run shows the gain it made: ``eval_gain/<bench>/pass_at_1`` with its
paired standard error.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace
from typing import Any, Callable

from r1flow.config import PromptSource, RewardSpec, RLConfig
from r1flow.sharding import WholeCopyEngine, shard, wants_sharding
from r1flow.stages.common import evaluate, load_policy, paired_gain, problems, save_policy, vllm_engine_kw
from r1flow.stages.runner import StageContext

Config = RLConfig


def check(ctx: StageContext) -> None:
    if "policy" not in ctx.inputs:
        raise ValueError(f"stage {ctx.spec.stage} needs input 'policy'")
    wants_rm = any(r.name == "reward_model" for p in ctx.config.prompts for r in p.rewards)
    if wants_rm and "reward_model" not in ctx.inputs:
        raise ValueError(f"{ctx.spec.stage}: a prompt source uses reward 'reward_model' but none was given")
    for p in ctx.config.prompts:
        _prompts(p, ctx)  # validates files and sizes before any model is loaded


def _prompts(src: PromptSource, ctx: StageContext) -> list[dict[str, str]]:
    from r1flow.data.preferences import load_nonreasoning

    seed = int(ctx.runtime.get("seed", 0))
    if src.source == "nonreasoning":
        rows = [{"question": r["prompt"], "answer": ""} for r in load_nonreasoning()][: src.num_prompts]
    else:
        rows = problems(ctx, src.source, src.num_prompts, seed + 303)
    return [{"question": r["question"], "gold": str(r["answer"]), "source": source_label(src)} for r in rows]


def source_label(src: PromptSource) -> str:
    """A prompt source's name in metrics and logs: the string as given, or a hub/S3/file
    ``DataSource``'s short name (MLflow metric names allow no ``:@[]``)."""
    from r1flow.data.benchmarks import benchmark_name

    if isinstance(src.source, str) and src.source in ("arith", "nonreasoning"):
        return src.source
    return benchmark_name(src.source)  # "gsm8k=data/gsm8k/train.jsonl" -> "gsm8k_train": no "=" in metric names


def mix_sources(lists: list[list[dict]], weights: list[float]) -> list[dict]:
    """Repeat each source's prompts so that uniform sampling draws source i with share weights[i]."""
    total = sum(weights)
    length = max(math.ceil(len(rows) * total / w) for rows, w in zip(lists, weights))
    mixed = []
    for rows, w in zip(lists, weights):
        count = max(1, round(length * w / total))
        mixed += [rows[i % len(rows)] for i in range(count)]
    return mixed


def keyed_rows(per_source: list[list[dict]], template: str) -> list[dict[str, dict]]:
    """Render each source's prompt rows and key them ``<position>:<source>#<row index>``; per
    source, its rows by key. Rewards route by this key, not the prompt text: one question in two
    sources renders to one prompt, yet each row keeps its own source's rewards and gold."""
    from r1flow.templates import render_prompt

    by_source = []
    for position, rows in enumerate(per_source):
        for index, row in enumerate(rows):
            row["prompt"] = render_prompt(row["question"], template)
            row["key"] = f"{position}:{row['source']}#{index}"
        by_source.append({row["key"]: row for row in rows})
    return by_source


def _reward_fn(spec: RewardSpec, template: str, ctx: StageContext,
               rows: dict[str, dict]) -> Callable[..., SimpleNamespace]:
    """A keyed reward over (prompts, completions, golds, keys=) for the source whose rows by key are
    ``rows``; rows of other sources score NaN (not applied), which the trainer leaves out of the
    reward's mean and counts as 0 in the total."""
    from r1flow.grpo.rewarding import keyed
    from r1flow.rewards import get_reward, split_completion

    if spec.name == "reward_model":
        from r1flow.stages.reward_model import reward_scorer

        # its own tokenizer and template, a trained folder or a hub RM's source.json, frozen (bf16 in bf16)
        scorer = reward_scorer(ctx, ctx.inputs["reward_model"], **spec.params)

        def base(keys, completions, golds):
            finals = [split_completion(c, template)[1] or "" for c in completions]
            return scorer([rows[k]["question"] for k in keys], finals)
    else:
        params = dict(spec.params)
        if spec.name in ("format", "language"):
            params.setdefault("template", template)
        if spec.name == "accuracy":
            params.setdefault("timeout_s", ctx.config.grpo.reward_timeout_s)
        rule = get_reward(spec.name, **params)

        def base(keys, completions, golds):
            return rule(completions, golds)

    @keyed
    def fn(prompts, completions, golds, *, keys):
        idx = [i for i, k in enumerate(keys) if k in rows]
        out = SimpleNamespace(scores=[float("nan")] * len(completions), n_timeouts=0)
        if idx:
            scored = base([keys[i] for i in idx], [completions[i] for i in idx], [golds[i] for i in idx])
            out.n_timeouts = int(getattr(scored, "n_timeouts", 0))
            for i, v in zip(idx, scored):
                out.scores[i] = float(v)
        return out

    return fn


def run(ctx: StageContext) -> None:
    from r1flow.engine import make_engine
    from r1flow.grpo.trainer import train_grpo
    from r1flow.plots import plot_curves
    from r1flow.templates import stop_strings
    from r1flow.tracking import ListTracker

    cfg: RLConfig = ctx.config
    model, tokenizer = load_policy(ctx.inputs["policy"], ctx, which=cfg.model)
    policy = model  # what trains; ``model`` is what samples, is evaluated and is saved
    sharded = wants_sharding(cfg.launch)
    if sharded:  # train the shards; keep a whole copy, refreshed from them every step (r1flow.sharding)
        model = copy.deepcopy(policy)
        ctx.sources[id(model)] = ctx.sources.get(id(policy), {})
        shard(policy)
    wants_ref = cfg.grpo.beta > 0 or cfg.grpo.log_kl
    ref_model = load_policy(ctx.inputs["policy"], ctx, which=cfg.model, frozen=True)[0] if wants_ref else None
    per_source = [_prompts(p, ctx) for p in cfg.prompts]
    for src, rows in zip(cfg.prompts, per_source):
        ctx.tracker.log_dataset(f"prompts/{source_label(src)}", rows, context="training", source=str(src.source))
    by_source = keyed_rows(per_source, cfg.template)  # rewards route rows by (source, index), not text
    prompts = mix_sources(per_source, [p.weight for p in cfg.prompts])
    reward_fns = [(f"{source_label(p)}/{r.name}" if len(cfg.prompts) > 1 else r.name, r.weight,
                   _reward_fn(r, cfg.template, ctx, rows))
                  for p, rows in zip(cfg.prompts, by_source) for r in p.rewards]
    extra = {**vllm_engine_kw(ctx, ctx.inputs["policy"], cfg.model), "sleep_mode": cfg.vllm_sleep,
             "gpu_memory_utilization": cfg.vllm_memory} if cfg.engine == "vllm" else {}
    engine = make_engine(cfg.engine, model, tokenizer, batch_size=cfg.grpo.prompts_per_step * cfg.grpo.group_size,
                         **extra)
    if sharded:
        engine = WholeCopyEngine(engine, model)
    if cfg.engine == "vllm":  # evaluate.engine vllm then samples from this engine too: one on the GPU
        ctx.engines[id(model)] = engine
    start, start_scores = evaluate(ctx, model, tokenizer, cfg.template, step=0, write=False)

    recorded = ListTracker(ctx.tracker)  # the curves PNG is drawn from what was logged
    recorded.history.append((0, start))

    def on_step(step: int, state: Any) -> None:
        ctx.fault_point(step)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.grpo.steps:
            recorded.history.append((step, evaluate(ctx, model, tokenizer, cfg.template, step=step, write=False)[0]))

    ctx.log(f"{ctx.spec.stage}: GRPO for {cfg.grpo.steps} steps on {len(prompts)} prompts")
    final = train_grpo(policy, tokenizer, prompts, reward_fns, cfg.grpo, recorded, engine=engine,
                       ref_model=ref_model, on_step=on_step, checkpoints=ctx.checkpointer(),
                       stop=stop_strings(cfg.template))
    if ctx.rank != 0:  # rank 0 alone saves and evaluates
        return
    save_policy(model, tokenizer, ctx)
    steps = int(final["steps"])  # fewer than cfg.grpo.steps when max_train_flops stopped it
    end, end_scores = evaluate(ctx, model, tokenizer, cfg.template, step=steps)
    recorded.history.append((steps, end))
    png = plot_curves(recorded.history, ctx.workdir / "curves.png", f"{ctx.spec.stage} (GRPO)")
    if png is not None:
        ctx.tracker.log_artifact(str(png), "plots")
    gains = {}
    for bench, scores in end_scores.items():
        for which, label in ((0, "pass_at_1"), (1, "lenient_pass_at_1")):
            gain, stderr = paired_gain(start_scores[bench], scores, which)
            gains[f"eval_gain/{bench}/{label}"] = gain
            gains[f"eval_gain/{bench}/{label}_stderr"] = stderr
    ctx.tracker.log_metrics(gains, steps)
    ctx.write_json("train.json", {**{k: v for k, v in final.items() if isinstance(v, (int, float))},
                                  "eval_start": start, "eval_end": end, "gains": gains})
