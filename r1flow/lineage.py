"""What a named pipeline run did last, kept in the store so a resume elsewhere finds it.

``runs/<name>/pipeline.json`` holds the flow, its resolved config, the MLflow parent run and the
Prefect flow run; ``runs/<name>/stages/<stage>.json`` holds what each stage attempt was keyed on
(its output-relevant config, shared settings, input digests, code version) and how it ended.
Both live in the configured store (S3 included), not on the machine that ran them, so
``r1flow resume NAME`` or ``prefect flow-run retry`` on another worker sees the same history.

Why the stage record matters: a crashed stage leaves checkpoints under its cache key. If the
config changed before the resume, the key changed too and those checkpoints would silently be
ignored; ``changed_since`` names what differs so the pipeline can refuse instead (issue: "a config
changed between crash and resume is refused with a clear message").
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from r1flow.store import MissingArtifact, Store, StoreError

Status = Literal["running", "done", "cached", "failed", "killed"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(name: str) -> str:
    """A run name becomes a store prefix: refuse anything that could escape it."""
    if not _NAME.match(name):
        raise ValueError(f"run name {name!r}: use letters, digits, '.', '_' or '-' (at most 100)")
    return name


class StageAttempt(BaseModel):
    """One stage attempt under a run name: what its cache key was made of, and how it ended."""

    model_config = ConfigDict(extra="ignore")  # a record from a newer r1flow stays readable
    stage: str
    key: str
    config: dict[str, Any] = Field(description="output-relevant config (cache-excluded fields dropped)")
    runtime: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict, description="input name -> content digest")
    code: str = ""
    warm_start: str | None = Field(None, description="checkpoints of an earlier attempt it continues")
    flow_run_id: str | None = Field(None, description="the Prefect flow run that started it")
    status: Status = "running"
    updated: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())


class PipelineRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a record from a newer r1flow stays readable
    name: str
    flow: str
    config: dict[str, Any]
    parent_run_id: str
    flow_run_id: str | None = None
    status: Status = "running"
    updated: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())


def _pipeline_key(name: str) -> str:
    return f"runs/{check_name(name)}/pipeline.json"


def _stage_key(name: str, stage: str) -> str:
    return f"runs/{check_name(name)}/stages/{stage}.json"


def _read(store: Store, key: str, model: type[BaseModel]):
    try:
        return model.model_validate(store.read_json(key))
    except MissingArtifact:
        return None
    except (StoreError, ValueError) as exc:  # never guess over a damaged record
        raise StoreError(f"run record {store.resolve(key)} is unreadable: {exc}") from exc


def read_pipeline(store: Store, name: str) -> PipelineRecord | None:
    return _read(store, _pipeline_key(name), PipelineRecord)


def write_pipeline(store: Store, record: PipelineRecord) -> None:
    record.updated = datetime.now(UTC).isoformat()
    store.write_json(_pipeline_key(record.name), record.model_dump(mode="json"))


def read_attempt(store: Store, name: str, stage: str) -> StageAttempt | None:
    return _read(store, _stage_key(name, stage), StageAttempt)


def write_attempt(store: Store, name: str, attempt: StageAttempt) -> None:
    attempt.updated = datetime.now(UTC).isoformat()
    store.write_json(_stage_key(name, attempt.stage), attempt.model_dump(mode="json"))


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``["grpo.lr: 2e-05 -> 1e-05", ...]`` for every leaf that differs (sorted, nested dicts walked).

    >>> config_diff({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 4})
    ['b.c: 2 -> 3', 'd: (unset) -> 4']
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append(f"{key}: (unset) -> {new[k]!r}")
            elif k not in new:
                out.append(f"{key}: {old[k]!r} -> (unset)")
            else:
                out.extend(config_diff(old[k], new[k], key))
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def changed_since(old: StageAttempt, new: StageAttempt) -> list[str]:
    """What differs between a crashed attempt and the one about to start, in words."""
    changes = config_diff(old.config, new.config)
    changes += [f"settings {c}" for c in config_diff(old.runtime, new.runtime)]
    changed_inputs = sorted(k for k in set(old.inputs) | set(new.inputs) if old.inputs.get(k) != new.inputs.get(k))
    if changed_inputs:
        changes.append(f"input(s) {', '.join(changed_inputs)} changed (an upstream stage produced other output)")
    if old.code != new.code:
        changes.append(f"library code version {old.code[:12]} -> {new.code[:12]}")
    return changes


def crashed_checkpoint(store: Store, previous: StageAttempt | None, output_key: str) -> tuple[str, str] | None:
    """``(checkpoint prefix, its newest saved state)`` — a training checkpoint or a generation
    chunk — that an unfinished attempt left behind (its own, else those it had continued from);
    None when it finished or saved nothing. ``output_key``: where it would have published."""
    from r1flow.checkpoint import checkpoint_prefix

    if previous is None or previous.status in ("done", "cached") or store.verify(output_key):
        return None
    for prefix in filter(None, (checkpoint_prefix(output_key), previous.warm_start)):
        if saved := store.keys(prefix):
            return prefix, store.resolve(max(saved))
    return None


def refusal(stage: str, name: str, saved: str, changes: list[str]) -> str:
    return (f"stage {stage} of run {name!r} stopped with its progress saved ({saved}) and changed "
            f"since: {'; '.join(changes) or 'its cache key'}. Resume with the same config; or pass "
            f"--allow-config-change to continue from that checkpoint under the new config (a new MLflow "
            f"run linked to the old one); or --refresh {stage} to start the stage afresh.")
