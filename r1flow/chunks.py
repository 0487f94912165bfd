"""Partial outputs of a generation stage, saved chunk by chunk, so a killed stage resumes without
duplicated or missing samples.

Generation (rejection sampling, §2.3.3) walks its prompts in fixed chunks: chunk ``i`` covers
prompts ``[i * size, (i + 1) * size)`` and samples with seed ``seed + i``. Its rows are therefore a
pure function of ``i``, and each completed chunk is stored as its own artifact (rows, then the
manifest last) under ``<checkpoint prefix>/chunks/chunk-000012``. A resumed attempt loads the
chunks that verify (sha256) and generates only the others; merging in chunk order gives the same
rows as an uninterrupted run, whatever the order or the process that produced each chunk.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from r1flow.store import Store, StoreError

ROWS = "rows.jsonl"


class ChunkLog:
    """Completed chunks of one stage attempt (``prefix``) in ``store``; ``warm_start`` adds those of
    another attempt — only for the same generation settings (the rows depend on them)."""

    def __init__(self, store: Store, prefix: str, *, warm_start: str | None = None,
                 log: Callable[[str], None] = print, meta: dict[str, str] | None = None) -> None:
        self.store, self.log, self.meta = store, log, dict(meta or {})
        self.prefixes = [p.strip("/") for p in (prefix, warm_start) if p]
        self.loaded = 0

    @staticmethod
    def key(prefix: str, index: int) -> str:
        return f"{prefix}/chunks/chunk-{index:06d}"

    def load(self, index: int) -> list[dict[str, Any]] | None:
        """The rows of chunk ``index`` if a complete, verified copy exists; else None."""
        for prefix in self.prefixes:
            key = self.key(prefix, index)
            if not self.store.exists(key):
                continue
            if not self.store.verify(key, deep=True):
                self.log(f"warning: chunk {self.store.resolve(key)} is incomplete or corrupt; generating it again")
                continue
            with tempfile.TemporaryDirectory(prefix="r1flow-chunk-") as tmp:
                folder = self.store.get_dir(key, tmp)
                rows = [json.loads(line) for line in (folder / ROWS).read_text().splitlines() if line]
            self.loaded += 1
            return rows
        return None

    def save(self, index: int, rows: list[dict[str, Any]]) -> None:
        with tempfile.TemporaryDirectory(prefix="r1flow-chunk-") as tmp:
            path = Path(tmp) / ROWS
            path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows) or "\n")
            try:
                self.store.put_dir(tmp, self.key(self.prefixes[0], index), meta={**self.meta, "chunk": str(index),
                                                                                "rows": str(len(rows))})
            except StoreError as exc:  # losing a partial output costs a re-generation, not the run
                self.log(f"warning: could not save chunk {index}: {exc}")


def owned_chunks(total: int, size: int, make: Callable[[int, int], list[dict[str, Any]]], *,
                 chunks: ChunkLog | None = None,
                 shard: tuple[int, int] | None = None) -> Iterator[tuple[int, int, list[dict[str, Any]]]]:
    """``(i, start, rows)`` of each chunk ``i`` of ``total`` items in chunks of ``size`` that this
    process owns — all, or with ``shard=(j, N)`` those with i mod N = j — in order: a saved chunk
    is reused (``chunks``), another is made by ``make(i, start)`` and saved."""
    for i, start in enumerate(range(0, total, size)):
        if shard and i % shard[1] != shard[0]:
            continue
        rows = chunks.load(i) if chunks else None
        if rows is None:
            rows = make(i, start)
            if chunks:
                chunks.save(i, rows)
        yield i, start, rows
