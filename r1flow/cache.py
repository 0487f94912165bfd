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
import re
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from r1flow.store import ArtifactRef, MissingArtifact, Store, digest_json

PACKAGE = Path(__file__).resolve().parent
_MODULE = re.compile(r"^r1flow(\.\w+)+$")
LOCK = PACKAGE.parent / "constraints.txt"  # the pinned dependencies: part of every code version
RECORDS = "prefect-results"  # under the store root: Prefect's record of each finished stage, by key


@lru_cache(maxsize=None)
def code_version(stage: str | None = None) -> str:
    """sha256 over the library source a stage runs — the modules its process can import
    (``stage_modules``), the package's data assets and the lock file — or, without a stage, over
    the whole package. An edit to a module the stage never imports leaves its key alone."""
    files = stage_modules(stage) if stage else sorted(
        p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    h = hashlib.sha256()
    for path in [*files, *sorted(p for p in PACKAGE.rglob("*") if p.suffix in {".jsonl", ".json"} and p.is_file())]:
        h.update(str(path.relative_to(PACKAGE)).encode())
        h.update(path.read_bytes())
    h.update(LOCK.read_bytes() if LOCK.exists() else b"no lock file")
    return h.hexdigest()


@lru_cache(maxsize=None)
def stage_modules(stage: str) -> list[Path]:
    """The ``r1flow`` modules a stage's process can import: every ``import`` (at module level or
    inside a function, as the stages import lazily) followed from the stage's module and the stage
    runner, read with ``ast`` (nothing is imported)."""
    from r1flow.stages import STAGES

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    todo, seen = ["r1flow.stages.runner", "r1flow.stages.__main__", STAGES[stage]], set()
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += [*_parents(name), *_imported(path, name)]
    return sorted(seen)


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "r1flow":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _parents(name: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imported(path: Path, name: str) -> list[str]:
    import ast

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .mod import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found += [base] + [f"{base}.{alias.name}" for alias in node.names]  # a name may be a module
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE.match(node.value) \
                and path != PACKAGE / "stages" / "__init__.py":  # the registry names every stage: not followed
            found.append(node.value)  # a module run by name: ``python -m r1flow.…``, a worker's entry point
    return found


def stage_key(stage: str, config: dict[str, Any], runtime: dict[str, Any],
              inputs: dict[str, ArtifactRef], exclude: set[str] = frozenset()) -> str:
    """The cache key of one stage run; ``exclude`` lists config fields that do not change outputs."""
    return digest_json({
        "stage": stage,
        "config": {k: v for k, v in config.items() if k not in exclude},
        "runtime": runtime,
        "inputs": {name: ref.digest for name, ref in sorted(inputs.items())},
        "code": code_version(stage),
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
