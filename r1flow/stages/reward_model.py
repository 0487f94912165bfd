"""The reward model for general (non-reasoning) prompts, used by the final RL stage (paper §2.3.4).

The paper's final RL stage scores helpfulness and harmlessness with reward models trained on
human preferences. Three ways to get one, by config (``RewardModelConfig``):

- ``source``: an existing Bradley–Terry reward model (a hub ``AutoModelForSequenceClassification``,
  a folder in hub layout or an ``s3://`` mirror) is used as is. Nothing is trained: the artifact
  holds ``model/source.json`` (as the base stage does for hub bases: weights are not copied) and,
  given ``preferences``, the model's held-out pair accuracy on them is measured.
- ``init: scratch``: a small ``Qwen2ForSequenceClassification`` sized by ``arch`` (tiny presets).
- ``init: base``: the pipeline's pretrained base (``base_model``) with a new one-label head — a
  reward model that starts from the policy's own knowledge, the usual choice at scale.

Training data is ``preferences`` (a JSONL of prompt/chosen/rejected; the pairs of the prompts
first in sha256 order are held out, so no prompt is on both sides and the split does not depend
on row order or seed) or, without one, synthetic pairs (``r1flow.data.preferences``). The tokenizer
is the base's, wherever the base lives (``load_tokenizer_of``: a hub base's folder holds only
``source.json``). The stage fails if the held-out pair accuracy is below ``min_accuracy``: no
random reward head reaches the RL stage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from r1flow.config import RewardModelConfig
from r1flow.stages.common import load_tokenizer_of, model_location, save_policy, setup_torch
from r1flow.stages.runner import StageContext

Config = RewardModelConfig
SOURCE_FIELDS = ("source", "revision", "trust_remote_code", "resolved")


def check(ctx: StageContext) -> None:
    cfg: RewardModelConfig = ctx.config
    if cfg.source is None and "base" not in ctx.inputs:
        raise ValueError("stage reward_model needs input 'base' (its tokenizer; with init: base, "
                         "its weights)")
    if cfg.source is not None:
        _check_source(cfg)
    if cfg.preferences is not None:
        preference_split(load_preferences(cfg.preferences), cfg.eval_pairs, need_train=cfg.source is None)


def run(ctx: StageContext) -> None:
    cfg: RewardModelConfig = ctx.config
    device = setup_torch(ctx)
    if cfg.source is not None:
        ctx.write_json("model/source.json", {k: getattr(cfg, k) for k in SOURCE_FIELDS})
        metrics, step = _measure_source(ctx, cfg), 0
        if metrics is None:
            ctx.log(f"reward model {cfg.source} used as is; no preferences given, accuracy not measured")
            ctx.write_json("metrics.json", {})
            return
    else:
        model, tokenizer, metrics = _train(ctx, cfg, device)
        step = cfg.train.steps
    accuracy = metrics["eval_accuracy"]
    ctx.tracker.log_metrics({"accuracy": accuracy}, step)
    ctx.log(f"reward model held-out pair accuracy {accuracy:.3f}")
    if accuracy < cfg.min_accuracy:
        raise RuntimeError(f"reward model held-out pair accuracy {accuracy:.3f} < "
                           f"reward_model.min_accuracy {cfg.min_accuracy}")
    if cfg.source is None:
        save_policy(model, tokenizer, ctx)
    ctx.write_json("metrics.json", metrics)


def _measure_source(ctx: StageContext, cfg: RewardModelConfig) -> dict[str, float] | None:
    """An existing reward model's pair accuracy on the held-out part of ``preferences`` (the part a
    model trained on the same file would be judged on), loaded as final RL loads it; None without."""
    from r1flow.train.reward_model import evaluate_pairs

    if cfg.preferences is None:
        return None
    _, held_out = preference_split(load_preferences(cfg.preferences), cfg.eval_pairs, need_train=False)
    ctx.tracker.log_dataset("preference_pairs/eval", held_out, context="evaluation", source=cfg.preferences)
    scorer = reward_scorer(ctx, ctx.workdir)
    metrics = evaluate_pairs(scorer.model, scorer.tokenizer, held_out, cfg.train.max_length,
                             cfg.train.eval_batch_size)
    ctx.tracker.log_metrics(metrics, 0)
    return metrics


def _train(ctx: StageContext, cfg: RewardModelConfig, device):
    """Train from scratch or from the base (mixed precision per forward under ``dtype: bfloat16``)."""
    from r1flow.data.preferences import preference_pairs
    from r1flow.precision import autocast_forwards, compute_dtype
    from r1flow.train.reward_model import build_reward_model, init_from_pretrained, train_reward_model

    seed = int(ctx.runtime.get("seed", 0))
    tokenizer = load_tokenizer_of(ctx.inputs["base"], ctx, cfg.base_model)
    if cfg.preferences is not None:
        train_pairs, eval_pairs = preference_split(load_preferences(cfg.preferences), cfg.eval_pairs)
        source = cfg.preferences
    else:
        train_pairs = preference_pairs(cfg.train_pairs, seed)
        eval_pairs = preference_pairs(cfg.eval_pairs, seed + 10_000)
        source = "synthetic"
    ctx.tracker.log_dataset("preference_pairs/train", train_pairs, context="training", source=source)
    ctx.tracker.log_dataset("preference_pairs/eval", eval_pairs, context="evaluation", source=source)
    if cfg.init == "base":
        where = model_location(ctx.inputs["base"], cfg.base_model, ctx)
        ctx.log(f"reward model from the {cfg.base_model} base ({where['model_path']}) with a new head")
        model = init_from_pretrained(where["model_path"], tokenizer, revision=where.get("revision"),
                                     trust_remote_code=where.get("trust_remote_code", False),
                                     seed=cfg.train.seed)
    else:
        model = build_reward_model(cfg.arch, tokenizer, cfg.train.seed)
    model = autocast_forwards(model.to(device), compute_dtype(ctx.runtime))
    model, metrics = train_reward_model(tokenizer, model, train_pairs, eval_pairs, cfg.train, ctx.tracker)
    return model, tokenizer, metrics


def reward_scorer(ctx: StageContext, artifact: Path, **params: Any):
    """The scorer of a reward_model artifact — a trained ``model/`` folder or a ``source.json`` —
    with the reward model's OWN tokenizer and chat template, on the stage's device. It never
    trains: under ``dtype: bfloat16`` it is loaded and kept in bf16 whole (``precision.freeze``).
    ``params``: ``RewardModelScorer`` settings (``batch_size``, ``max_length``)."""
    from r1flow.precision import compute_dtype, freeze
    from r1flow.train.reward_model import RewardModelScorer, load_reward_model

    unknown = sorted(set(params) - {"batch_size", "max_length"})
    if unknown:
        raise ValueError(f"reward 'reward_model' params: unknown {', '.join(unknown)} (known: batch_size, "
                         "max_length; where the model comes from is reward_model.source/revision/"
                         "trust_remote_code)")
    where = model_location(artifact, "model", ctx)
    dtype = compute_dtype(ctx.runtime)
    model, tokenizer = load_reward_model(where["model_path"], revision=where.get("revision"),
                                         trust_remote_code=where.get("trust_remote_code", False), dtype=dtype)
    model = freeze(model, dtype).to(setup_torch(ctx))
    return RewardModelScorer(model, tokenizer, **params)


def load_preferences(path: str) -> list[dict[str, Any]]:
    """Rows ``{prompt, chosen, rejected}`` (strings; an optional ``id``) of a JSONL preference file;
    errors name the config field, the file, the line and the missing field."""
    from r1flow.data.io import read_jsonl

    try:
        rows = read_jsonl(path, {"prompt": str, "chosen": str, "rejected": str})
    except ValueError as exc:
        raise ValueError(f"reward_model.preferences: {exc}") from None
    for number, row in enumerate(rows, start=1):
        if "id" in row and not isinstance(row["id"], (str, int)):
            raise ValueError(f"reward_model.preferences: {path}: row {number}: field 'id' should be a "
                             "string or an integer")
    return rows


def preference_split(rows: list[dict[str, Any]], eval_pairs: int, *, need_train: bool = True
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out): whole prompts in sha256 order go to the held-out side until it has at
    least ``eval_pairs`` pairs — deterministic, and no prompt is judged that was trained on."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["prompt"], []).append(row)
    train: list[dict[str, Any]] = []
    held_out: list[dict[str, Any]] = []
    for prompt in sorted(groups, key=lambda p: hashlib.sha256(p.encode("utf-8")).hexdigest()):
        (held_out if len(held_out) < eval_pairs else train).extend(groups[prompt])
    if need_train and not train:
        raise ValueError(f"reward_model.eval_pairs: holding out {eval_pairs} of the {len(rows)} preference "
                         f"pairs ({len(groups)} prompts) leaves none to train on")
    return train, held_out


def _check_source(cfg: RewardModelConfig) -> None:
    """Before any weight is read: a folder must be in hub layout, unchanged since the pipeline pinned
    it, and a sequence classifier; a hub model's config must be one too (its config alone is fetched)."""
    from r1flow.loading import pin, revision_of, source_kind
    from r1flow.train.reward_model import check_classifier

    try:
        kind = source_kind(cfg.source)
        if kind == "local":
            digest = pin(cfg.source, cfg.revision, trust_remote_code=cfg.trust_remote_code)
            if cfg.resolved and cfg.resolved != digest:
                raise ValueError(f"{cfg.source} changed since the pipeline pinned it ({cfg.resolved})")
            config = json.loads((Path(cfg.source).expanduser() / "config.json").read_text())
            check_classifier(config, cfg.source)
        elif kind == "hub":
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(cfg.source, revision=revision_of(cfg.model_dump()),
                                                trust_remote_code=cfg.trust_remote_code)
            check_classifier(config.to_dict(), cfg.source)
    except ValueError as exc:
        raise ValueError(f"reward_model.source: {exc}") from None
