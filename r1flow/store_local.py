"""The local side of the artifact store: a folder on this machine (see ``r1flow.store``).

Every file lands through a hidden temp file and a rename, so a reader never sees half a file; a
large copy first checks the free disk space (``r1flow.diskspace``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from r1flow.store import (
    Locator,
    MissingArtifact,
    Store,
    StoreError,
    _atomic_write,
    sha256_file,
)


class LocalStore(Store):
    """A folder on this machine; every file lands through a hidden temp file and a rename."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root_uri = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise StoreError(f"key {key!r} escapes the store root {self.root}")
        return path

    def local_path(self, where: Locator) -> Path | None:
        return self._path(self._key(where))

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.root / ".check", b"ok")
        except OSError as e:
            raise StoreError(f"local store {self.root} is not writable: {e}") from e

    def _read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise MissingArtifact(f"nothing at {self._path(key)}") from None

    def _write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, data)

    def _upload(self, path: Path, key: str) -> None:
        dst = self._path(key)
        if path.resolve() == dst:  # committing a folder written in place (e.g. a checkpoint)
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(dst, source=path)

    def _make_room(self, src: Path, size: int) -> None:
        from r1flow.diskspace import ensure_free

        if self.root not in src.resolve().parents:  # a folder written in place needs no copy
            ensure_free(self.root, size, f"an artifact from {src}")

    def _download(self, key: str, path: Path) -> None:
        shutil.copyfile(self._path(key), path)

    def _sizes(self, prefix: str) -> dict[str, int]:
        base = self._path(prefix)
        if not base.is_dir():
            return {}
        return {p.relative_to(base).as_posix(): p.stat().st_size for p in base.rglob("*") if p.is_file()}

    def _sha(self, key: str) -> str:
        return sha256_file(self._path(key))

    def _remove(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def delete(self, where: Locator) -> None:
        super().delete(where)
        path = self._path(self._key(where))
        if path.is_dir() and path != self.root:
            shutil.rmtree(path, ignore_errors=True)
