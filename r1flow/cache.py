"""Stage cache keys (DESIGN "Tasks pass references").

A stage's key is the digest of: the stage name, the config fields that change its outputs, the
runtime settings that change them (seed, device, dtype, evaluation), the content digests of its
inputs and the library's code version — never the run name or the flow-run id. So a new run with
the same config skips the stage, a changed config re-runs exactly that stage and those downstream
(their input digests change), and a fix to the library is not silently skipped.

Prefect's record of a finished stage run (its persisted result: the ``ArtifactRef``), which is what
makes a stage ``Cached``, lives in the store every worker shares (``prefect-results/<key>/``, a
local folder or S3), not on the machine that ran it: a pipeline resumed on another machine, or a
second worker, finds the stages finished anywhere (``flows.run.StoreRecords`` hands these to
Prefect).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from r1flow.store import ArtifactRef, MissingArtifact, Store, digest_json

PACKAGE = Path(__file__).resolve().parent
RECORDS = "prefect-results"  # under the store root: Prefect's record of each finished stage, by key


@lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 over the library's source and assets (sorted by path)."""
    h = hashlib.sha256()
    for path in sorted(p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix in {".py", ".jsonl", ".json"}):
        if "__pycache__" in path.parts:
            continue
        h.update(str(path.relative_to(PACKAGE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def stage_key(stage: str, config: dict[str, Any], runtime: dict[str, Any],
              inputs: dict[str, ArtifactRef], exclude: set[str] = frozenset()) -> str:
    """The cache key of one stage run; ``exclude`` lists config fields that do not change outputs."""
    return digest_json({
        "stage": stage,
        "config": {k: v for k, v in config.items() if k not in exclude},
        "runtime": runtime,
        "inputs": {name: ref.digest for name, ref in sorted(inputs.items())},
        "code": code_version(),
    })


def _record_dir(key: str) -> str:
    if not key or "/" in key or key.startswith("."):
        raise ValueError(f"not a cache key: {key!r}")
    return f"{RECORDS}/{key}"


def read_record(store: Store, key: str) -> bytes | None:
    """Prefect's record of the stage run cached under ``key`` (JSON), None when there is none."""
    try:
        return json.dumps(store.read_json(f"{_record_dir(key)}/record.json")).encode()
    except MissingArtifact:
        return None


def write_record(store: Store, key: str, content: bytes) -> None:
    """Keep Prefect's record (JSON) of the stage run cached under ``key``, replaced atomically."""
    store.write_json(f"{_record_dir(key)}/record.json", json.loads(content))


def drop_stale_record(store: Store, key: str, output_key: str) -> bool:
    """Drop the record of ``key`` when the output it names no longer verifies, so the stage runs
    again instead of being a cache hit on a vanished artifact; True when one was dropped."""
    if read_record(store, key) is None or store.verify(output_key):
        return False
    store.delete(_record_dir(key))
    return True
