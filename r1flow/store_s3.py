"""The S3 side of the artifact store: ``s3://bucket/prefix`` through boto3 (see ``r1flow.store``).

A configurable endpoint (MinIO, AWS, moto), a short connect timeout and few botocore retries:
a wrong or dead endpoint fails in seconds with ``StoreUnreachable`` naming it (``check``, and any
call before the endpoint first answers). After that, a transient failure of a transfer or listing
(connection refused/reset/closed, timeout, 5xx, SlowDown) is a blip to ride out: the operation is
redone from scratch with capped, jittered exponential backoff for ``S3Options.retry_seconds``,
then fails saying what, where, how many tries and how long; 4xx, missing buckets and credential
errors never retry. A retried upload starts the file over and the manifest is written only after
every file, so an interrupted upload never looks complete. CRC checksums default to
"when_required" (some S3-compatible stores reject botocore's defaults). Credentials come only
from the boto3 chain and are never held in refs, manifests, pickles, messages or ``repr``.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from r1flow.store import (
    _CHUNK,
    MissingArtifact,
    Store,
    StoreError,
    StoreUnreachable,
    _join,
)

log = logging.getLogger("r1flow.store")
T = TypeVar("T")
# S3 error codes that mean "busy or briefly broken, ask again" (besides any HTTP 5xx or 429).
TRANSIENT_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable",
                             "Throttling", "ThrottlingException", "RequestLimitExceeded"})


class S3Options(BaseModel):
    """How the S3 client talks to the endpoint; defaults fail fast and suit S3-compatible stores."""

    model_config = ConfigDict(extra="forbid")
    region: str | None = Field(None, description="region; None = boto3 chain, else us-east-1")
    connect_timeout: float = Field(5.0, gt=0, description="seconds to open a connection")
    read_timeout: float = Field(60.0, gt=0, description="seconds to wait for a response")
    max_attempts: int = Field(3, ge=1, le=20, description="tries per request (botocore retries)")
    retry_mode: Literal["standard", "adaptive", "legacy"] = Field("standard", description="botocore mode")
    checksum: Literal["when_required", "when_supported"] = Field(
        "when_required", description="request_checksum_calculation and response_checksum_validation"
    )
    addressing_style: Literal["path", "virtual", "auto"] = Field("path", description="bucket in URL path")
    multipart_threshold: int = Field(64 << 20, ge=5 << 20, description="bytes; larger files go multipart")
    multipart_chunksize: int = Field(16 << 20, ge=5 << 20, description="bytes per multipart part")
    max_concurrency: int = Field(4, ge=1, le=64, description="threads per file transfer")
    retry_seconds: float = Field(60.0, ge=0, description="retry transient failures this long; 0 = off")
    retry_base_delay: float = Field(0.5, gt=0, description="first backoff in seconds; doubles per attempt")
    retry_max_delay: float = Field(10.0, gt=0, description="cap on one backoff, seconds")


def backoff(attempt: int, base: float, cap: float, rand: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): ``base * 2**(attempt-1)`` capped
    at ``cap``, scaled into [50 %, 100 %] by ``rand`` in [0, 1) so parallel clients spread out."""
    return min(cap, base * 2.0 ** min(attempt - 1, 60)) * (0.5 + 0.5 * rand)


def is_transient(exc: BaseException | None) -> bool:
    """Whether a botocore/boto3 failure is worth retrying: no connection, a timeout, a cut stream,
    a 5xx/429 or a throttling code. Wrappers (boto3's S3UploadFailedError, RetriesExceededError,
    StoreError) are judged by what they wrap; anything else (4xx, credentials) is permanent."""
    from boto3.exceptions import Boto3Error
    from botocore import exceptions as bce

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, bce.ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = str(exc.response.get("Error", {}).get("Code", ""))
            return code in TRANSIENT_CODES or status >= 500 or status == 429
        if isinstance(exc, bce.SSLError):
            return "certificate" not in str(exc).lower()  # a bad certificate stays bad
        if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError, bce.IncompleteReadError)):
            return True
        if isinstance(exc, OSError):  # a raw socket error that got past botocore
            return isinstance(exc, (TimeoutError, builtins.ConnectionError))
        if not isinstance(exc, (Boto3Error, StoreError)):
            return False
        exc = getattr(exc, "last_exception", None) or exc.__cause__ or exc.__context__
    return False


class S3Store(Store):
    """``s3://bucket/prefix`` through boto3 (multipart above ``S3Options.multipart_threshold``)."""

    def __init__(self, root: str, endpoint_url: str | None = None, options: S3Options | None = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        bucket, _, prefix = root.removeprefix("s3://").partition("/")
        if not bucket:
            raise StoreError(f"no bucket in {root!r}; expected s3://bucket/prefix")
        self.bucket, self.prefix, o = bucket, prefix.strip("/"), options or S3Options()
        self.options, self._endpoint_arg = o, endpoint_url
        self.root_uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        config = Config(
            connect_timeout=o.connect_timeout,
            read_timeout=o.read_timeout,
            retries={"max_attempts": o.max_attempts, "mode": o.retry_mode},
            request_checksum_calculation=o.checksum,
            response_checksum_validation=o.checksum,
            s3={"addressing_style": o.addressing_style},
        )
        session = boto3.session.Session()
        region = o.region or session.region_name or "us-east-1"
        self._client = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self.endpoint = self._client.meta.endpoint_url
        self._transfer = TransferConfig(
            multipart_threshold=o.multipart_threshold,
            multipart_chunksize=o.multipart_chunksize,
            max_concurrency=o.max_concurrency,
        )
        self._reached = False  # has the endpoint ever answered this instance? (see _retry)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as (root, endpoint, options): the boto3 client and its credentials stay behind."""
        return (S3Store, (self.root_uri, self._endpoint_arg, self.options))

    def __repr__(self) -> str:
        return f"S3Store({self.root_uri!r}, endpoint={self.endpoint!r})"

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn botocore failures into store errors that name the endpoint and the object."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            yield
        except (BotoConnectionError, HTTPClientError) as e:
            raise StoreUnreachable(f"S3 endpoint {self.endpoint} unreachable while {doing}: {e}") from e
        except NoCredentialsError as e:
            raise StoreError(f"no AWS credentials in the environment/boto3 chain for {self.endpoint}") from e
        except ClientError as e:
            self._reached = True  # an HTTP answer, even an error, means the endpoint is there
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise MissingArtifact(f"nothing at s3://{self.bucket} while {doing}") from e
            raise StoreError(f"S3 error {code} at {self.endpoint} while {doing}: {e}") from e
        except Boto3Error as e:
            raise StoreError(f"S3 transfer failed at {self.endpoint} while {doing}: {e}") from e

    def _retry(self, doing: str, call: Callable[[], T]) -> T:
        """``call()`` under ``_errors``, redone from scratch on transient failures with backoff.

        The budget runs from the first failure, so a long transfer that fails late still gets
        its full ``retry_seconds``. An endpoint that has never answered fails at once: a wrong
        URL or a server that is down should say so in seconds, as ``check`` does."""
        o, attempt, started, first_failure = self.options, 0, time.monotonic(), None
        while True:
            attempt += 1
            try:
                with self._errors(doing):
                    result = call()
                self._reached = True
                return result
            except StoreError as e:
                if not (self._reached and is_transient(e.__cause__)):
                    raise
                now = time.monotonic()
                first_failure = now if first_failure is None else first_failure
                left = o.retry_seconds - (now - first_failure)
                if left <= 0:
                    if attempt == 1:
                        raise
                    raise StoreUnreachable(
                        f"S3 endpoint {self.endpoint} did not recover while {doing}: gave up after "
                        f"{attempt} attempts and {now - started:.1f} s "
                        f"(retry_seconds={o.retry_seconds:g}); last error: {e.__cause__}"
                    ) from e.__cause__
                delay = min(left, backoff(attempt, o.retry_base_delay, o.retry_max_delay, random.random()))
                log.warning("S3 %s: attempt %d %s failed (%s: %s); retrying in %.1f s (%.1f s of budget left)",
                            self.endpoint, attempt, doing, type(e.__cause__).__name__,
                            str(e.__cause__).strip()[:200], delay, left)
                time.sleep(delay)

    def _obj(self, key: str) -> str:
        return _join(self.prefix, key)

    def check(self) -> None:
        """Fail fast (no store-level retries): preflight wants an answer in seconds."""
        probe = self._obj(".check")
        try:
            with self._errors(f"checking bucket {self.bucket!r} is reachable and writable"):
                self._client.head_bucket(Bucket=self.bucket)
                self._client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok")
                self._client.delete_object(Bucket=self.bucket, Key=probe)
        except MissingArtifact:
            raise StoreError(f"bucket {self.bucket!r} does not exist at {self.endpoint}") from None
        self._reached = True

    def _read(self, key: str) -> bytes:
        get = lambda: self._client.get_object(Bucket=self.bucket, Key=self._obj(key))["Body"].read()
        return self._retry(f"reading {self.resolve(key)}", get)

    def _write(self, key: str, data: bytes) -> None:
        put = lambda: self._client.put_object(Bucket=self.bucket, Key=self._obj(key), Body=data)
        self._retry(f"writing {self.resolve(key)}", put)

    def _upload(self, path: Path, key: str) -> None:
        # s3transfer aborts a failed multipart upload and a retry starts the file over; nothing is
        # visible before put_dir writes the manifest after the last file.
        up = lambda: self._client.upload_file(str(path), self.bucket, self._obj(key), Config=self._transfer)
        self._retry(f"uploading {path} to {self.resolve(key)}", up)

    def _download(self, key: str, path: Path) -> None:
        # s3transfer writes a temp file and renames it, so a retry simply overwrites
        down = lambda: self._client.download_file(self.bucket, self._obj(key), str(path), Config=self._transfer)
        self._retry(f"downloading {self.resolve(key)}", down)

    def _sizes(self, prefix: str) -> dict[str, int]:
        base = self._obj(prefix)
        start = f"{base}/" if base else ""

        def listing() -> dict[str, int]:
            out: dict[str, int] = {}
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
            for page in pages:
                out.update({o["Key"][len(start) :]: o["Size"] for o in page.get("Contents", [])})
            return out

        return self._retry(f"listing {self.resolve(prefix)}", listing)

    def _versions(self, prefix: str) -> dict[str, str]:
        """Size and ETag of every object under ``prefix``: a re-uploaded file of the same size is
        another version."""
        base = self._obj(prefix)
        start = f"{base}/" if base else ""

        def listing() -> dict[str, str]:
            out: dict[str, str] = {}
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                out.update({o["Key"][len(start):]: f"{o['Size']}:{o.get('ETag', '')}" for o in page.get("Contents", [])})
            return out

        return self._retry(f"listing {self.resolve(prefix)}", listing)

    def _sha(self, key: str) -> str:
        def digest() -> str:
            h = hashlib.sha256()
            body = self._client.get_object(Bucket=self.bucket, Key=self._obj(key))["Body"]
            for chunk in body.iter_chunks(_CHUNK):
                h.update(chunk)
            return h.hexdigest()

        return self._retry(f"hashing {self.resolve(key)}", digest)

    def _remove(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._obj(k)} for k in keys[i : i + 1000]]
            delete = lambda b=batch: self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": b, "Quiet": True}
            )
            self._retry(f"deleting under {self.root_uri}", delete)

