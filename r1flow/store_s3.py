"""The S3 side of the artifact store: ``s3://bucket/prefix`` through boto3 (see ``r1flow.store``).

A configurable endpoint (MinIO, AWS, moto), a short connect timeout and few retries, so an
unreachable endpoint fails in seconds with ``StoreUnreachable`` naming it; CRC checksums default
to "when_required" because some S3-compatible stores reject botocore's defaults. Credentials come
only from the boto3 chain and are never held in refs, manifests, pickles or ``repr``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from r1flow.store import (_CHUNK, MissingArtifact, Store, StoreError, StoreUnreachable, _join)


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
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise MissingArtifact(f"nothing at s3://{self.bucket} while {doing}") from e
            raise StoreError(f"S3 error {code} at {self.endpoint} while {doing}: {e}") from e
        except Boto3Error as e:
            raise StoreError(f"S3 transfer failed at {self.endpoint} while {doing}: {e}") from e

    def _obj(self, key: str) -> str:
        return _join(self.prefix, key)

    def check(self) -> None:
        probe = self._obj(".check")
        try:
            with self._errors(f"checking bucket {self.bucket!r} is reachable and writable"):
                self._client.head_bucket(Bucket=self.bucket)
                self._client.put_object(Bucket=self.bucket, Key=probe, Body=b"ok")
                self._client.delete_object(Bucket=self.bucket, Key=probe)
        except MissingArtifact:
            raise StoreError(f"bucket {self.bucket!r} does not exist at {self.endpoint}") from None

    def _read(self, key: str) -> bytes:
        with self._errors(f"reading {self.resolve(key)}"):
            return self._client.get_object(Bucket=self.bucket, Key=self._obj(key))["Body"].read()

    def _write(self, key: str, data: bytes) -> None:
        with self._errors(f"writing {self.resolve(key)}"):
            self._client.put_object(Bucket=self.bucket, Key=self._obj(key), Body=data)

    def _upload(self, path: Path, key: str) -> None:
        with self._errors(f"uploading {path} to {self.resolve(key)}"):
            self._client.upload_file(str(path), self.bucket, self._obj(key), Config=self._transfer)

    def _download(self, key: str, path: Path) -> None:
        with self._errors(f"downloading {self.resolve(key)}"):
            self._client.download_file(self.bucket, self._obj(key), str(path), Config=self._transfer)

    def _sizes(self, prefix: str) -> dict[str, int]:
        base = self._obj(prefix)
        start = f"{base}/" if base else ""
        out: dict[str, int] = {}
        with self._errors(f"listing {self.resolve(prefix)}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
            for page in pages:
                out.update({o["Key"][len(start) :]: o["Size"] for o in page.get("Contents", [])})
        return out

    def _sha(self, key: str) -> str:
        h = hashlib.sha256()
        with self._errors(f"hashing {self.resolve(key)}"):
            body = self._client.get_object(Bucket=self.bucket, Key=self._obj(key))["Body"]
            for chunk in body.iter_chunks(_CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def _remove(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._obj(k)} for k in keys[i : i + 1000]]
            with self._errors(f"deleting under {self.root_uri}"):
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
