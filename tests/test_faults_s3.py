"""S3 faults with real components: moto_server behind a loopback proxy that cuts the line.

The ``faults`` tests (``make test-faults``) cut the proxy in the middle of a multipart upload and
check that the store rides out a short outage, gives up clearly on a long one without leaving a
complete-looking artifact, and never retries a permanent error. The unmarked tests pin the retry
classification and backoff schedule without any server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Self
from urllib.parse import urlparse

import boto3
import pytest
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)

from r1flow import store_s3
from r1flow.store import MANIFEST, StoreError, StoreUnreachable, sha256_file
from r1flow.store_s3 import S3Options, S3Store, backoff, is_transient
from tests.loopback_proxy import LoopbackProxy
from tests.s3server import create_bucket, dummy_aws_env, moto_server

BUCKET = "r1flow-faults"
MB = 1 << 20


# --- unit: classification, schedule and the retry loop, no server --------------------------------


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


def _wrapped_upload_failure(inner: Exception) -> S3UploadFailedError:
    """What boto3's upload_file raises for a ClientError: a wrapper with the error as context."""
    try:
        try:
            raise inner
        except ClientError as e:
            raise S3UploadFailedError(f"Failed to upload: {e}")  # as boto3 does: context, no cause
    except S3UploadFailedError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),  # refused
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), True),  # reset / closed
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (ResponseStreamingError(error="connection broken"), True),  # cut mid-body
        (ConnectionResetError(104, "reset"), True),
        (_client_error("SlowDown", 503), True),
        (_client_error("InternalError", 500), True),
        (_client_error("RequestTimeout", 400), True),
        (_client_error("503", 503), True),  # HEAD answers carry only the status
        (_wrapped_upload_failure(_client_error("ServiceUnavailable", 503)), True),
        (RetriesExceededError(ReadTimeoutError(endpoint_url="http://x")), True),
        (StoreUnreachable("x"), False),  # a bare store error wraps nothing
        (_client_error("AccessDenied", 403), False),
        (_client_error("NoSuchBucket", 404), False),
        (_client_error("404", 404), False),
        (_client_error("InvalidAccessKeyId", 403), False),
        (_wrapped_upload_failure(_client_error("AccessDenied", 403)), False),
        (NoCredentialsError(), False),
        (SSLError(endpoint_url="https://x", error="certificate verify failed"), False),
        (FileNotFoundError("model.bin"), False),
        (ValueError("bad"), False),
    ],
)
def test_transient_classification(exc, transient):
    assert is_transient(exc) is transient


def test_backoff_doubles_caps_and_jitters():
    assert [backoff(n, 0.5, 4.0, rand=0.999999) for n in range(1, 7)] == pytest.approx([0.5, 1, 2, 4, 4, 4])
    assert [backoff(n, 0.5, 4.0, rand=0.0) for n in range(1, 5)] == [0.25, 0.5, 1, 2]  # at least half
    assert backoff(10_000, 0.5, 4.0, rand=0.5) == 3.0  # no overflow on a long outage


@pytest.fixture
def fake_clock(monkeypatch):
    """store_s3's view of ``time`` on a fake clock (the real module is untouched); returns the sleeps."""
    now, sleeps = [1000.0], []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    monkeypatch.setattr(store_s3, "time", SimpleNamespace(monotonic=lambda: now[0], sleep=sleep))
    return sleeps


def _offline_store(**options) -> S3Store:
    with dummy_aws_env():
        return S3Store(f"s3://{BUCKET}/unit", endpoint_url="http://127.0.0.1:9",
                       options=S3Options(retry_base_delay=1, retry_max_delay=4, **options))


def test_retry_loop_recovers_logs_and_gives_up_on_budget(fake_clock, caplog):
    store, calls = _offline_store(retry_seconds=10), []
    store._reached = True  # the endpoint has answered before: failures now look transient

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise EndpointConnectionError(endpoint_url=store.endpoint)
        return "ok"

    with caplog.at_level(logging.WARNING, logger="r1flow.store"):
        assert store._retry("reading s3://b/k", flaky) == "ok"
    assert len(calls) == 3 and len(fake_clock) == 2 and 0.5 <= fake_clock[0] <= 1 <= fake_clock[1] <= 2
    assert [r.getMessage().split(" failed")[0] for r in caplog.records] == [
        f"S3 {store.endpoint}: attempt 1 reading s3://b/k", f"S3 {store.endpoint}: attempt 2 reading s3://b/k"]

    def down() -> None:
        raise ConnectionClosedError(endpoint_url=store.endpoint)

    fake_clock.clear()
    with pytest.raises(StoreUnreachable, match=r"endpoint http://127.0.0.1:9 did not recover while writing "
                       r"s3://b/k: gave up after \d+ attempts and 10.0 s \(retry_seconds=10\)"):
        store._retry("writing s3://b/k", down)
    assert sum(fake_clock) == pytest.approx(10)  # the last sleep is cut to the budget


def test_retry_loop_fails_fast_when_permanent_or_never_reached(fake_clock):
    store = _offline_store(retry_seconds=60)
    refused = EndpointConnectionError(endpoint_url=store.endpoint)
    with pytest.raises(StoreUnreachable, match="unreachable while reading"):  # never answered: wrong URL?
        store._retry("reading k", lambda: (_ for _ in ()).throw(refused))
    with pytest.raises(StoreError, match="AccessDenied") as info:  # an answer: reached, but permanent
        store._retry("reading k", lambda: (_ for _ in ()).throw(_client_error("AccessDenied", 403)))
    assert not isinstance(info.value, StoreUnreachable) and store._reached and fake_clock == []
    store = _offline_store(retry_seconds=0)
    store._reached = True
    with pytest.raises(StoreUnreachable, match="unreachable while reading"):  # retries off
        store._retry("reading k", lambda: (_ for _ in ()).throw(refused))
    assert fake_clock == []


# --- faults: moto_server behind the proxy -----------------------------------------------------------


@pytest.fixture(scope="module")
def moto():
    with dummy_aws_env(), moto_server() as server:
        create_bucket(server.endpoint_url, BUCKET)
        yield server.endpoint_url


@pytest.fixture
def proxy(moto):
    with LoopbackProxy("127.0.0.1", urlparse(moto).port) as p:
        yield p


def _store(proxy: LoopbackProxy, **options) -> S3Store:
    # 5 MB parts (S3's minimum) so a 24 MB file goes multipart; botocore's own retries off, so
    # the store-level retry is what rides out the cut.
    opts = S3Options(multipart_threshold=5 * MB, multipart_chunksize=5 * MB, max_attempts=1,
                     connect_timeout=2, read_timeout=10, retry_base_delay=0.25, retry_max_delay=1, **options)
    return S3Store(f"s3://{BUCKET}/faults-{uuid.uuid4().hex[:8]}", endpoint_url=proxy.url, options=opts)


def _artifact(root: Path) -> tuple[Path, bytes]:
    big = os.urandom(24 * MB)
    files = {"config.json": b'{"hidden": 8}', "model.safetensors": big, "tokenizer.json": b'{"v": 1}'}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root, big


def _raw_keys(moto: str, store: S3Store) -> list[str]:
    """Object keys under the store's prefix, read straight from moto (not through the proxy)."""
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=store.prefix + "/").get("Contents", [])]


class _Cutter:
    """Cuts the proxy once ``after_bytes`` have gone up it while the block runs; restores after
    ``restore_after`` seconds (None: stays cut). Records whether the block was still running."""

    def __init__(self, proxy: LoopbackProxy, after_bytes: int, restore_after: float | None) -> None:
        self.proxy, self.after_bytes, self.restore_after = proxy, after_bytes, restore_after
        self.done, self.cut_during_block, self.killed = threading.Event(), False, 0
        self._thread = threading.Thread(target=self._run, name="cutter", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        while self.proxy.bytes_up < self.after_bytes:
            if self.done.is_set():
                return
            time.sleep(0.002)
        self.killed = self.proxy.cut()
        self.cut_during_block = not self.done.is_set()
        if self.restore_after is not None:
            time.sleep(self.restore_after)
            self.proxy.restore()


@pytest.mark.faults
def test_multipart_upload_rides_out_a_cut(moto, proxy, tmp_path, caplog):
    store = _store(proxy, retry_seconds=60)
    src, big = _artifact(tmp_path / "src")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="r1flow.store"), _Cutter(proxy, 8 * MB, 3.0) as cutter:
        ref = store.put_dir(src, "model")
    took = time.monotonic() - start
    retries = [r.getMessage() for r in caplog.records if r.name == "r1flow.store"]
    # The cut really hit the upload: connections were live, it happened before put_dir returned,
    # the store retried the big file, and the outage (3 s) is inside the time it took.
    assert cutter.cut_during_block and cutter.killed >= 1 and proxy.cuts == 1
    assert any("uploading" in m and "model.safetensors" in m and "retrying in" in m for m in retries), retries
    assert took >= 3.0
    head = boto3.client("s3", endpoint_url=moto, region_name="us-east-1").head_object(
        Bucket=BUCKET, Key=f"{store.prefix}/model/model.safetensors")
    assert head["ETag"].strip('"').endswith("-5")  # 24 MB in 5 MB parts: multipart, completed once
    assert store.verify(ref, deep=True)
    out = store.get_dir(ref, tmp_path / "out")
    assert sha256_file(out / "model.safetensors") == hashlib.sha256(big).hexdigest()
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()


@pytest.mark.faults
def test_cut_longer_than_the_budget_fails_clearly_and_leaves_no_artifact(moto, proxy, tmp_path):
    store = _store(proxy, retry_seconds=3)
    src, _ = _artifact(tmp_path / "src")
    start = time.monotonic()
    with _Cutter(proxy, 8 * MB, restore_after=None) as cutter, pytest.raises(StoreUnreachable) as info:
        store.put_dir(src, "model")
    took = time.monotonic() - start
    message = str(info.value)
    assert cutter.cut_during_block and 3.0 <= took < 20, took
    assert f"S3 endpoint {proxy.url} did not recover while uploading" in message
    assert "model.safetensors" in message and "attempts" in message and "retry_seconds=3" in message
    assert "testing-secret-key" not in message
    keys = _raw_keys(moto, store)
    assert not any(k.endswith(MANIFEST) for k in keys), keys  # interrupted: never looks complete
    proxy.restore()
    assert not store.exists("model") and not store.verify("model")
    assert store.keys() == []
    ref = store.put_dir(src, "model")  # the same key, once the line is back
    assert store.verify(ref, deep=True) and store.keys() == ["model"]


@pytest.mark.faults
def test_permanent_errors_are_not_retried(moto, proxy, tmp_path, caplog):
    store = _store(proxy, retry_seconds=30)
    missing = S3Store("s3://no-such-bucket-faults/x", endpoint_url=proxy.url, options=store.options)
    src, _ = _artifact(tmp_path / "src")
    with caplog.at_level(logging.WARNING, logger="r1flow.store"):
        for call in (lambda: missing.put_dir(src, "model"), lambda: missing.exists("model")):
            start = time.monotonic()
            with pytest.raises(StoreError, match="NoSuchBucket") as info:
                call()
            assert not isinstance(info.value, StoreUnreachable)
            assert time.monotonic() - start < 3  # far under the 30 s budget
    assert not [r for r in caplog.records if r.name == "r1flow.store"]
