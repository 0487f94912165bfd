"""Stage cache keys (DESIGN "Tasks pass references").

A stage's key is the digest of: the stage name, the config fields that change its outputs, the
runtime settings that change them (seed, device, dtype, evaluation), the content digests of its
inputs and the library's code version — never the run name or the flow-run id. So a new run with
the same config skips the stage, a changed config re-runs exactly that stage and those downstream
(their input digests change), and a fix to the library is not silently skipped.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from r1flow.store import ArtifactRef, digest_json

PACKAGE = Path(__file__).resolve().parent


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
