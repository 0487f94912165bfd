"""A full disk is a clear error, found before a large write where possible, never a half-written file.

``ensure_free(path, need, what)`` runs before large writes (models, checkpoints, artifact copies
and downloads): it refuses when the write would leave less than ``R1FLOW_MIN_FREE_MB`` (default
256) free on that filesystem. Writes it could not foresee (logs, another process filling the disk)
still fail with ENOSPC; ``disk_writes`` turns that into ``DiskFull`` naming what was being written,
where, and how much space is left. A stage that runs out of disk is not retried on the same
machine: the retry would meet the same disk.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from r1flow.store import StoreError

_MB = 1 << 20


class DiskFull(StoreError):
    """Not enough free disk space for a write (before it, or ENOSPC during it)."""


def reserve_bytes() -> int:
    return int(float(os.environ.get("R1FLOW_MIN_FREE_MB", "256")) * _MB)


def free_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def ensure_free(path: str | Path, need_bytes: int, what: str) -> None:
    free, reserve = free_bytes(path), reserve_bytes()
    if free - need_bytes < reserve:
        raise DiskFull(f"not enough disk space for {what} at {path}: needs {need_bytes / _MB:.1f} MB, "
                       f"{free / _MB:.1f} MB free, {reserve / _MB:.0f} MB kept in reserve "
                       "(R1FLOW_MIN_FREE_MB)")


def is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC/EDQUOT, also when a library wrapped it (torch.save raises RuntimeError, safetensors
    its own error): the causes are walked and the OS message recognised."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(exc) for text in ("No space left on device", "Disk quota exceeded")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def disk_writes(what: str, path: str | Path) -> Iterator[None]:
    """A full disk inside the block becomes ``DiskFull`` naming ``what`` and ``path``."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, DiskFull) or not is_disk_full(exc):
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)[:200]
        raise DiskFull(f"disk full while writing {what} at {path} ({free_bytes(path) / _MB:.1f} MB free): "
                       f"{reason}") from exc


def tensor_bytes(*state_dicts: dict) -> int:
    """Bytes of every tensor in (nested) state dicts: what saving them will roughly write."""
    total = 0
    stack: list = list(state_dicts)
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(item, "element_size") and hasattr(item, "numel"):
            total += item.element_size() * item.numel()
    return total
