"""Checks that run before any expensive work: every named input exists and parses, the store
is reachable. Each failure names the input (DEVELOPERS "Bad input")."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from r1flow.config import RL_STAGES, ConfigError, PipelineConfig
from r1flow.data.benchmarks import benchmark_name, load_benchmark
from r1flow.data.io import read_jsonl
from r1flow.data.sources import DataSource
from r1flow.memory_plan import refusal as memory_refusal
from r1flow.store import StoreError, open_store

BUILTIN_SOURCES = {"arith", "nonreasoning", "r1_zero"}


def preflight(config: PipelineConfig, store_root: str, stages: tuple[str, ...] | None = None) -> PipelineConfig:
    """Check the inputs of ``stages`` (default: the whole pipeline) — only theirs: a stage flow on
    a GPU pool is not blocked by another stage's local file that exists only where that one runs.
    Returns the config with its model sources pinned (``pin_models``)."""
    stages = stages or config.stage_names()
    config = pin_models(config, stages)
    if why := memory_refusal(config, stages):  # the memory plan (r1flow estimate) must fit the GPU
        raise ConfigError(f"gpu_memory_gb: {why}")
    for stage in set(RL_STAGES) & set(stages):
        for i, p in enumerate(config.section(stage).prompts):
            _check_problems(f"{stage}.prompts.{i}.source", p.source)
    if "cold_start" in stages and "r1_zero" in config.cold_start.sources:
        _check_problems("cold_start.prompts", config.cold_start.prompts, builtins={"arith"})
    if "rejection_sampling" in stages:
        _check_problems("rejection_sampling.prompts", config.rejection_sampling.prompts, builtins={"arith"})
    for i, src in enumerate(config.cold_start.sources if "cold_start" in stages else []):
        if src not in BUILTIN_SOURCES:
            _check_file(f"cold_start.sources.{i}", src, {"question": str, "answer": str, "completion": str})
    for i, bench in enumerate(config.evaluate.benchmarks):
        _check_problems(f"evaluate.benchmarks.{i}", bench, builtins=())  # arith_heldout: its file is read
    evaluated = sorted(benchmark_name(b) for b in config.evaluate.benchmarks)
    registers = {"final_rl", "distill"} & set(stages)  # the pipeline registers (and crowns) these
    if registers and config.tracking.registered_model and config.tracking.promotion.benchmark not in evaluated:
        raise ConfigError(f"tracking.promotion.benchmark: {config.tracking.promotion.benchmark!r} is not "
                          f"evaluated; evaluate.benchmarks gives {evaluated}")
    try:
        open_store(store_root, s3_endpoint_url=config.store.s3_endpoint_url).check()
    except StoreError as exc:
        raise ConfigError(f"store.root {store_root!r}: {exc}") from None
    return config


def model_sources(config: PipelineConfig, stages: tuple[str, ...]) -> dict[str, Any]:
    """The model sources of ``stages`` by dotted field: ``base.teacher``, ``base.student``, and a
    reward model given by ``reward_model.source``."""
    found: dict[str, Any] = {}
    if "base" in stages:
        found.update({f"base.{role}": getattr(config.base, role) for role in ("teacher", "student")
                      if getattr(config.base, role).source != "build"})
    if "reward_model" in stages and getattr(config.reward_model, "source", None):
        found["reward_model"] = config.reward_model
    return found


def pin_models(config: PipelineConfig, stages: tuple[str, ...]) -> PipelineConfig:
    """Every model source checked and pinned (``r1flow.loading.pin``) into its ``resolved`` field,
    so the cache key and MLflow params name the exact weights; an already pinned one (a stage flow
    sent the pipeline's config) must still resolve to the same version."""
    from r1flow.loading import SourceError, pin, source_kind

    data = config.model_dump(mode="json")
    for field, src in model_sources(config, stages).items():
        try:
            kind = source_kind(src.source)
            revision = src.resolved if src.resolved and kind == "hub" else src.revision
            version = pin(src.source, revision, trust_remote_code=src.trust_remote_code,
                          s3_endpoint_url=config.store.s3_endpoint_url)
        except (SourceError, StoreError) as exc:
            raise ConfigError(f"{field}.source: {exc}") from None
        if src.resolved and version != src.resolved:
            raise ConfigError(f"{field}.source: {src.source} is now {version}, the pipeline pinned {src.resolved}")
        section = data
        for part in field.split("."):
            section = section[part]
        section["resolved"] = version
    return type(config).model_validate(data)


def _check_problems(field: str, source: str | DataSource,
                    builtins: Collection[str] = BUILTIN_SOURCES) -> None:
    """A problem set (``gsm8k=PATH``, ``math500=PATH``, question/answer JSONL, or a ``DataSource``:
    a hub dataset, an S3 object, a file with a column mapping) loads; the field's ``builtins`` pass.
    A failure names the field and the source: ``evaluate.benchmarks.1: hf://x/y[test]: ...``."""
    if isinstance(source, str) and source in builtins:
        return
    try:
        load_benchmark(source)
    except (OSError, ValueError) as exc:
        name, text = repr(source) if isinstance(source, str) else str(source), str(exc)
        raise ConfigError(f"{field}: {text if text.startswith(name) else f'{name}: {text}'}") from None


def _check_file(field: str, path: str, required: dict) -> None:
    try:
        read_jsonl(path, required)
    except ValueError as exc:
        raise ConfigError(f"{field}: {exc}") from None
