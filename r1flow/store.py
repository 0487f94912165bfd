"""The artifact store: one interface over a local folder and S3 (DESIGN "One store interface").

Why it looks like this:

1. Stages pass small ``ArtifactRef``s (URI + content digest), never models or datasets
   (DESIGN "Tasks pass references"); a ref is cheap JSON that Prefect can persist and hash.
2. An artifact is a folder plus ``manifest.json`` (sorted ``{path, size, sha256}`` list,
   created time, meta) written LAST: no manifest, no artifact. Replacing a key hides the old
   manifest first, so a crash mid-upload leaves nothing visible and resume logic ("newest
   complete checkpoint") never sees half a folder.
3. ``ArtifactRef.digest`` hashes the file list only (``digest_json(files)``), not the manifest's
   created time or meta: identical content gives an identical digest, so cache keys built from
   input digests stay stable when a stage re-runs and reproduces the same output.
4. Readers verify every sha256 (``CorruptArtifact`` names the file). ``verify`` is cheap by
   default (manifest present, sizes match); ``deep=True`` re-hashes.
5. The algorithm lives once in ``Store``; a backend supplies seven byte-level primitives.
   ``LocalStore`` is in ``r1flow.store_local``; ``S3Store`` (boto3, fail-fast endpoint, credentials only from the
   boto3 chain) is in ``r1flow.store_s3``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class StoreError(RuntimeError):
    """Any store failure, with a message that says what and where."""


class MissingArtifact(StoreError):
    """No manifest at the key: the artifact does not exist (or was never completed)."""


class CorruptArtifact(StoreError):
    """A file's bytes do not match its manifest entry, or the artifact changed under a ref."""


class StoreUnreachable(StoreError):
    """The S3 endpoint cannot be reached (connection refused, timeout, DNS)."""


class ArtifactRef(BaseModel):
    """What a task returns: where the artifact lives and what its content hashes to."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    uri: str = Field(description="file:///abs/path or s3://bucket/key of the artifact folder")
    digest: str = Field(description="sha256 of the manifest's canonical file list")
    meta: dict[str, str] = Field(default_factory=dict, description="e.g. producing run id, stage")

    def sub(self, path: str) -> str:
        """URI of a file or sub-folder inside the artifact."""
        return f"{self.uri.rstrip('/')}/{path.lstrip('/')}"


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str
    size: int = Field(ge=0)
    sha256: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    files: list[FileEntry]
    created: str
    digest: str
    meta: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def build(cls, files: list[FileEntry], meta: dict[str, str] | None) -> Manifest:
        files = sorted(files, key=lambda f: f.path)
        return cls(
            files=files,
            created=datetime.now(timezone.utc).isoformat(),
            digest=digest_json([f.model_dump() for f in files]),
            meta=dict(meta or {}),
        )

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(), indent=1, sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes, where: str) -> Manifest:
        try:
            m = cls.model_validate_json(data)
        except ValueError as e:
            raise CorruptArtifact(f"manifest at {where} is unreadable: {e}") from None
        if digest_json([f.model_dump() for f in m.files]) != m.digest:
            raise CorruptArtifact(f"manifest at {where} does not match its own digest")
        return m


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def digest_json(obj: Any) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace); pydantic models are dumped first.

    >>> digest_json({"b": 1, "a": [1, 2]}) == digest_json({"a": [1, 2], "b": 1})
    True
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def _files_of(local_dir: Path) -> list[Path]:
    """Every regular file under local_dir except a top-level manifest (sorted)."""
    if not local_dir.is_dir():
        raise StoreError(f"{local_dir} is not a folder")
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p != local_dir / MANIFEST)
    if not files:
        raise StoreError(f"refusing to store an empty folder: {local_dir}")
    return files


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


Locator = str | ArtifactRef


class Store(ABC):
    """Artifacts by key ('/'-separated, relative to the root); a URI inside the root works as a key.

    Backends set ``root_uri`` and implement ``check`` and the primitives at the end.
    """

    root_uri: str

    def resolve(self, key: Locator) -> str:
        key = self._key(key)
        return f"{self.root_uri}/{key}" if key else self.root_uri

    def local_path(self, where: Locator) -> Path | None:
        """The artifact's folder on this machine when it can be read in place (no copy), else None."""
        return None

    def put_dir(self, local_dir: str | Path, key: str, meta: dict[str, str] | None = None) -> ArtifactRef:
        """Upload every file of local_dir to key, then the manifest; returns the ref."""
        src, base = Path(local_dir), self._artifact_key(key)
        files = _files_of(src)
        entries = [
            FileEntry(path=f.relative_to(src).as_posix(), size=f.stat().st_size, sha256=sha256_file(f))
            for f in files
        ]
        manifest = Manifest.build(entries, meta)
        self._make_room(src, sum(e.size for e in entries))
        self._remove([_join(base, MANIFEST)])  # hide an older version before touching its files
        for f, e in zip(files, entries):
            self._upload(f, _join(base, e.path))
        self._write_manifest(base, manifest)
        wanted = {e.path for e in entries} | {MANIFEST}
        self._remove([_join(base, p) for p in self._sizes(base) if p not in wanted])
        return ArtifactRef(uri=self.resolve(base), digest=manifest.digest, meta=manifest.meta)

    def _write_manifest(self, base: str, manifest: Manifest) -> None:
        self._write(_join(base, MANIFEST), manifest.to_bytes())

    def manifest(self, where: Locator) -> Manifest:
        uri = self.resolve(where)
        try:
            data = self._read(_join(self._key(where), MANIFEST))
        except MissingArtifact:
            raise MissingArtifact(f"no artifact at {uri} (no {MANIFEST})") from None
        return Manifest.parse(data, uri)

    def ref(self, where: Locator) -> ArtifactRef:
        """A ref to an existing artifact, rebuilt from its manifest."""
        m = self.manifest(where)
        return ArtifactRef(uri=self.resolve(where), digest=m.digest, meta=m.meta)

    def get_dir(self, where: Locator, local_dir: str | Path) -> Path:
        """Download into local_dir (with its manifest), checking every sha256."""
        from r1flow.diskspace import ensure_free

        m, base, dst = self._checked_manifest(where), self._key(where), Path(local_dir)
        ensure_free(dst, sum(e.size for e in m.files), f"downloading {self.resolve(base)}")
        for e in m.files:
            target = dst / e.path
            target.parent.mkdir(parents=True, exist_ok=True)
            self._download(_join(base, e.path), target)
            sha = sha256_file(target)
            if sha != e.sha256:
                raise CorruptArtifact(
                    f"{e.path} in {self.resolve(base)}: sha256 {sha[:12]}… != manifest {e.sha256[:12]}…"
                )
        _atomic_write(dst / MANIFEST, m.to_bytes())
        return dst

    def exists(self, where: Locator) -> bool:
        try:
            self.manifest(where)
        except MissingArtifact:
            return False
        return True

    def verify(self, where: Locator, *, deep: bool = False) -> bool:
        """Manifest present (and matching the ref's digest), sizes match; deep: sha256 match."""
        try:
            m = self._checked_manifest(where)
        except (MissingArtifact, CorruptArtifact):
            return False
        base = self._key(where)
        sizes = self._sizes(base)
        if any(sizes.get(e.path) != e.size for e in m.files):
            return False
        return not deep or all(self._sha(_join(base, e.path)) == e.sha256 for e in m.files)

    def delete(self, where: Locator) -> None:
        """Manifest first (the artifact vanishes at once), then its files."""
        base = self._artifact_key(where)
        self._remove([_join(base, MANIFEST)])
        self._remove([_join(base, p) for p in self._sizes(base)])

    def keys(self, prefix: str = "") -> list[str]:
        """Keys of complete artifacts (with a manifest) under prefix, sorted."""
        base = self._key(prefix)
        found = [p.rpartition("/")[0] for p in self._sizes(base) if p.rpartition("/")[2] == MANIFEST]
        return sorted(_join(base, p) for p in found if not any(s.startswith(".") for s in p.split("/")))

    def files(self, prefix: str = "") -> dict[str, str]:
        """Every file under ``prefix`` (relative path -> its version: size and ETag on S3, size and
        modification time locally), manifest or not: a folder another tool wrote, such as a model
        mirrored in hub layout (``r1flow.loading``)."""
        return self._versions(self._key(prefix))

    def _versions(self, prefix: str) -> dict[str, str]:
        return {path: str(size) for path, size in self._sizes(prefix).items()}

    def get_files(self, prefix: str, names: list[str], local_dir: str | Path) -> Path:
        """Download ``names`` (from ``files(prefix)``) into ``local_dir``, keeping their subfolders."""
        local_dir = Path(local_dir)
        for name in names:
            (local_dir / name).parent.mkdir(parents=True, exist_ok=True)
            self._download(_join(self._key(prefix), name), local_dir / name)
        return local_dir

    def read_json(self, key: str) -> Any:
        return json.loads(self._read(self._key(key)))

    def write_json(self, key: str, obj: Any) -> None:
        """Small records (run state, cache entries), replaced atomically."""
        self._write(self._key(key), json.dumps(obj, indent=1, sort_keys=True, default=_json_default).encode())

    @abstractmethod
    def check(self) -> None:
        """Raise unless the store is reachable and writable (call before expensive work)."""

    def _make_room(self, src: Path, size: int) -> None:
        """Before ``put_dir`` writes ``size`` bytes: refuse early if they cannot fit (local disk)."""

    def _checked_manifest(self, where: Locator) -> Manifest:
        m = self.manifest(where)
        if isinstance(where, ArtifactRef) and m.digest != where.digest:
            raise CorruptArtifact(
                f"{where.uri} was replaced: digest {m.digest[:12]}… != ref {where.digest[:12]}…"
            )
        return m

    def _artifact_key(self, where: Locator) -> str:
        if not (key := self._key(where)):
            raise StoreError(f"an artifact needs a key below the store root {self.root_uri}")
        return key

    def _key(self, where: Locator) -> str:
        uri = where.uri if isinstance(where, ArtifactRef) else str(where)
        root = self.root_uri.rstrip("/")
        if uri == root or uri.startswith(root + "/"):
            return uri[len(root) :].strip("/")
        if "://" in uri:
            raise StoreError(f"{uri} is not inside this store ({self.root_uri})")
        return uri.strip("/")

    # The backend's primitives; keys are full keys relative to the root.
    @abstractmethod
    def _read(self, key: str) -> bytes: ...  # MissingArtifact when absent
    @abstractmethod
    def _write(self, key: str, data: bytes) -> None: ...  # atomic replace
    @abstractmethod
    def _upload(self, path: Path, key: str) -> None: ...
    @abstractmethod
    def _download(self, key: str, path: Path) -> None: ...
    @abstractmethod
    def _sizes(self, prefix: str) -> dict[str, int]: ...  # path relative to prefix -> size
    @abstractmethod
    def _sha(self, key: str) -> str: ...
    @abstractmethod
    def _remove(self, keys: list[str]) -> None: ...  # absent keys are fine


def _atomic_write(path: Path, data: bytes | None = None, source: Path | None = None) -> None:
    """``data`` (or a copy of ``source``) lands at ``path`` through a hidden temp file and a
    rename; on failure (a full disk included: ``DiskFull``) the temp file is removed."""
    from r1flow.diskspace import disk_writes

    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with disk_writes(path.name, path.parent):
            if source is not None:
                shutil.copyfile(source, tmp)
            else:
                tmp.write_bytes(data or b"")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def open_store(
    root: str | Path, *, s3_endpoint_url: str | None = None, s3_options: Any = None
) -> Store:
    """``s3://bucket/prefix`` -> S3Store (``r1flow.store_s3``); ``file://…`` or a path -> LocalStore."""
    root = str(root)
    if root.startswith("s3://"):
        from r1flow.store_s3 import S3Store

        return S3Store(root, endpoint_url=s3_endpoint_url, options=s3_options)
    from r1flow.store_local import LocalStore

    if root.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return LocalStore(unquote(urlparse(root).path))
    if "://" in root:
        raise StoreError(f"unsupported store root {root!r}: use a path, file://… or s3://bucket/prefix")
    return LocalStore(root)
