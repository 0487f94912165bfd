"""Checks that run before any expensive work: every named input exists and parses, the store
is reachable. Each failure names the input (DEVELOPERS "Bad input")."""

from __future__ import annotations

from pathlib import Path

from r1flow.config import RL_STAGES, ConfigError, PipelineConfig
from r1flow.data.benchmarks import benchmark_name, load_benchmark
from r1flow.data.io import read_jsonl
from r1flow.store import StoreError, open_store

BUILTIN_SOURCES = {"arith", "nonreasoning", "r1_zero"}


def preflight(config: PipelineConfig, store_root: str, stages: tuple[str, ...] | None = None) -> None:
    """Check the inputs of ``stages`` (default: the whole pipeline) — only theirs: a stage flow on
    a GPU pool is not blocked by another stage's local file that exists only where that one runs."""
    stages = stages or config.stage_names()
    for role, src in (("base.teacher", config.base.teacher), ("base.student", config.base.student)):
        if "base" in stages and src.source != "build" and _is_path(src.source) \
                and not Path(src.source).expanduser().exists():
            raise ConfigError(f"{role}.source: model path does not exist: {src.source}")
    for stage in set(RL_STAGES) & set(stages):
        for i, p in enumerate(config.section(stage).prompts):
            _check_problems(f"{stage}.prompts.{i}.source", p.source)
    if "cold_start" in stages and "r1_zero" in config.cold_start.sources:
        _check_problems("cold_start.prompts", config.cold_start.prompts, only_builtin="arith")
    if "rejection_sampling" in stages:
        _check_problems("rejection_sampling.prompts", config.rejection_sampling.prompts, only_builtin="arith")
    for i, src in enumerate(config.cold_start.sources if "cold_start" in stages else []):
        if src not in BUILTIN_SOURCES:
            _check_file(f"cold_start.sources.{i}", src, {"question": str, "answer": str, "completion": str})
    for bench in config.evaluate.benchmarks:
        try:
            load_benchmark(bench)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"evaluate.benchmarks: {bench!r}: {exc}") from None
    evaluated = sorted(benchmark_name(b) for b in config.evaluate.benchmarks)
    registers = {"final_rl", "distill"} & set(stages)  # the pipeline registers (and crowns) these
    if registers and config.tracking.registered_model and config.tracking.promotion.benchmark not in evaluated:
        raise ConfigError(f"tracking.promotion.benchmark: {config.tracking.promotion.benchmark!r} is not "
                          f"evaluated; evaluate.benchmarks gives {evaluated}")
    try:
        open_store(store_root, s3_endpoint_url=config.store.s3_endpoint_url).check()
    except StoreError as exc:
        raise ConfigError(f"store.root {store_root!r}: {exc}") from None


def _is_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).exists() or source.count("/") != 1


def _check_problems(field: str, source: str, only_builtin: str | None = None) -> None:
    """A problem file (``gsm8k=PATH``, ``math500=PATH``, question/answer JSONL) parses; built-ins
    pass (only ``only_builtin`` where the field takes just that one)."""
    if source in ({only_builtin} if only_builtin else BUILTIN_SOURCES):
        return
    try:
        load_benchmark(source)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{field}: {source!r}: {exc}") from None


def _check_file(field: str, path: str, required: dict) -> None:
    try:
        read_jsonl(path, required)
    except ValueError as exc:
        raise ConfigError(f"{field}: {exc}") from None
