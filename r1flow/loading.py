"""One loader for every model and tokenizer a stage uses, from the three places production
checkpoints live (DESIGN "Real checkpoints are the product"):

- a hub id (``Qwen/Qwen2.5-Math-1.5B``) at a revision — a branch, tag or commit;
- a local folder in hub layout (``config.json``, weights, tokenizer files);
- an ``s3://bucket/prefix`` mirror in hub layout: air-gapped GPU clusters copy models into object
  storage; it is downloaded once per content into ``$R1FLOW_HOME/models/``.

``pin`` runs when a pipeline starts (preflight): it checks the source exists and has a
``config.json``, refuses a model that needs the repository's own code while
``trust_remote_code`` is off, and returns an immutable version — the hub commit sha, or a
digest of the folder's or mirror's listing — that goes into the config (``resolved``), hence into
MLflow params and the stage cache key: a moved branch cannot silently change a cached run.

Hub access is the user's environment (``HF_TOKEN``, ``HF_ENDPOINT``, ``HF_HOME``,
``HF_HUB_OFFLINE``), read by ``huggingface_hub`` itself: r1flow never passes or logs a token.
S3 credentials come from the boto3 chain, the endpoint from the store config or
``AWS_ENDPOINT_URL``.

Tokenizer conventions differ between real checkpoints (shared/data/hub/README): a Llama-style
folder may name no eos or pad token (SmolLM2 without ``tokenizer_config.json``); then the eos
comes from ``config.json`` and the pad is the config's pad id or the eos. Sampling pads left.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


class SourceError(ValueError):
    """A model source that cannot be used; the message names it."""


def source_kind(source: str) -> str:
    """``"s3"``, ``"local"`` or ``"hub"``.

    >>> source_kind("s3://models/qwen"), source_kind("/data/qwen"), source_kind("Qwen/Qwen2.5-Math-1.5B")
    ('s3', 'local', 'hub')
    """
    if source.startswith("s3://"):
        return "s3"
    if source.startswith((".", "/", "~")) or Path(source).expanduser().exists():
        return "local"
    if HUB_ID.match(source):
        return "hub"
    raise SourceError(f"{source!r} is neither a hub id (org/name), a folder, nor an s3:// prefix")


def pin(source: str, revision: str | None = None, *, trust_remote_code: bool = False,
        s3_endpoint_url: str | None = None) -> str:
    """The immutable version of a model source, after checking it can load (see module doc)."""
    kind = source_kind(source)
    if kind == "hub":
        commit, config = _hub_commit(source, revision)
        check_config(config, source, trust_remote_code)
        return commit
    if revision:
        raise SourceError(f"{source}: a revision pins hub ids only; a folder or mirror is pinned by its content")
    if kind == "local":
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise SourceError(f"model folder does not exist: {source}")
        check_config(_read_config(folder / "config.json", source), source, trust_remote_code)
        return "local-" + _listing_digest(source, _folder_versions(folder))
    listing = _s3_store(source, s3_endpoint_url).files()
    if "config.json" not in listing:
        raise SourceError(f"{source}: no config.json under this prefix (found {len(listing)} files): "
                          "mirror the model in hub layout")
    with tempfile.TemporaryDirectory(prefix="r1flow-src-") as tmp:
        config = json.loads(_s3_store(source, s3_endpoint_url).get_files("", ["config.json"], tmp)
                            .joinpath("config.json").read_text())
    check_config(config, source, trust_remote_code)
    return "s3-" + _listing_digest(source, listing)


def check_config(config: dict[str, Any], source: str, trust_remote_code: bool) -> None:
    """Refuse a model whose config maps it to the repository's own code while remote code is off."""
    from transformers import CONFIG_MAPPING

    auto_map = config.get("auto_map") or {}  # with a built-in model_type, transformers ignores it
    if not trust_remote_code and config.get("model_type") not in CONFIG_MAPPING:
        raise SourceError(f"{source}: model_type {config.get('model_type')!r} needs the repository's own code "
                          f"({', '.join(auto_map) or 'not in transformers'}); set trust_remote_code: true "
                          "only if you trust it")


def local_path(spec: dict[str, Any], *, s3_endpoint_url: str | None = None) -> str:
    """What ``from_pretrained`` (or vLLM) loads for a ``source.json`` spec: the hub id (with
    ``revision`` = the pinned commit), the folder, or the local copy of an s3 mirror."""
    source, pinned = spec["source"], spec.get("resolved")
    kind = source_kind(source)
    if kind == "hub":
        return source
    if kind == "local":
        folder = Path(source).expanduser().resolve()  # transformers and vLLM do not expand "~"
        if pinned and "local-" + _listing_digest(source, _folder_versions(folder)) != pinned:
            raise SourceError(f"{source} changed since the pipeline pinned it ({pinned})")
        return str(folder)
    listing = _s3_store(source, s3_endpoint_url).files()
    version = _listing_digest(source, listing)
    if pinned and "s3-" + version != pinned:
        raise SourceError(f"{source} changed since the pipeline pinned it ({pinned})")
    cache = Path(os.environ.get("R1FLOW_HOME", ".r1flow")).expanduser() / "models" / version[:24]
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / f".{cache.name}.lock", "w") as lock:  # the ranks of a stage fetch it once
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cache.is_dir():
            _fetch_s3(source, sorted(listing), s3_endpoint_url, into=cache)
    return str(cache)


def revision_of(spec: dict[str, Any]) -> str | None:
    """The hub revision to load: the pinned commit when there is one."""
    resolved = spec.get("resolved") or ""
    return resolved if _SHA.match(resolved) else spec.get("revision")


def load_tokenizer(path: str, *, revision: str | None = None, trust_remote_code: bool = False):
    """A tokenizer ready for batched sampling: left padding, an eos and a pad token (module doc)."""
    from transformers import AutoConfig, AutoTokenizer

    kw = dict(revision=revision, trust_remote_code=trust_remote_code)
    tok = AutoTokenizer.from_pretrained(path, **kw)
    if tok.eos_token is None or tok.pad_token is None:
        config = AutoConfig.from_pretrained(path, **kw)
        eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
        if tok.eos_token is None and eos is not None:
            tok.eos_token = tok.convert_ids_to_tokens(eos)
        pad = getattr(config, "pad_token_id", None)
        if tok.pad_token is None:
            tok.pad_token = tok.convert_ids_to_tokens(pad) if pad is not None else tok.eos_token
    if tok.eos_token is None:
        raise SourceError(f"{path}: neither the tokenizer nor config.json names an eos token")
    tok.padding_side = "left"
    return tok


def _hub_commit(repo: str, revision: str | None) -> tuple[str, dict[str, Any]]:
    """(commit sha, config.json) of a hub repository at ``revision``: from the hub, or offline
    (``HF_HUB_OFFLINE``) from the local hub cache."""
    from huggingface_hub import HfApi, constants, errors, hf_hub_download, snapshot_download

    try:
        if constants.is_offline_mode():
            folder = Path(snapshot_download(repo, revision=revision, local_files_only=True,
                                            allow_patterns=["config.json"]))
            commit = folder.name
        else:
            commit = HfApi().model_info(repo, revision=revision).sha
        config_file = hf_hub_download(repo, "config.json", revision=commit)
    except errors.RevisionNotFoundError:
        raise SourceError(f"{repo}: revision {revision!r} not found on the hub") from None
    except errors.GatedRepoError:
        raise SourceError(f"{repo}: gated model; accept its terms and give HF_TOKEN access") from None
    except errors.RepositoryNotFoundError:
        raise SourceError(f"{repo}: no such model on the hub (or HF_TOKEN has no access)") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, FileNotFoundError):
        raise SourceError(f"{repo}: revision {revision or 'main'} is not in the hub cache "
                          f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set") from None
    except errors.EntryNotFoundError:  # after its subclass LocalEntryNotFoundError
        raise SourceError(f"{repo}: no config.json at revision {revision or 'main'}") from None
    return commit, _read_config(Path(config_file), repo)


def _read_config(path: Path, source: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SourceError(f"{source}: no config.json (a model folder needs the hub layout)") from None
    except json.JSONDecodeError as exc:
        raise SourceError(f"{source}: config.json is not JSON ({exc})") from None


def _folder_versions(folder: Path) -> dict[str, str]:
    """Size and modification time of every file: a re-saved checkpoint of the same size differs."""
    return {str(p.relative_to(folder)): f"{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _listing_digest(source: str, listing: dict[str, Any]) -> str:
    """A source's version: its location and every file's version."""
    return hashlib.sha256(json.dumps([source, sorted(listing.items())]).encode()).hexdigest()


def _s3_store(source: str, endpoint: str | None):
    from r1flow.store import open_store

    return open_store(source.rstrip("/"), s3_endpoint_url=endpoint or os.environ.get("AWS_ENDPOINT_URL"))


def _fetch_s3(source: str, names: list[str], endpoint: str | None, into: Path) -> Path:
    """Download ``names`` of a mirror into ``into`` atomically (a half copy is never seen)."""
    into.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=into.parent))
    try:
        _s3_store(source, endpoint).get_files("", names, staging)
        staging.rename(into)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return into
