"""The artifact store against a local folder and a real S3 server (moto_server on loopback)."""

from __future__ import annotations

import hashlib
import os
import pickle
import time
import uuid
from pathlib import Path

import boto3
import pytest

from r1flow.store import (
    MANIFEST,
    ArtifactRef,
    CorruptArtifact,
    MissingArtifact,
    Store,
    StoreError,
    StoreUnreachable,
    digest_json,
    open_store,
    sha256_file,
)
from r1flow.store_local import LocalStore
from r1flow.store_s3 import S3Options, S3Store
from tests.s3server import create_bucket, dummy_aws_env, free_port, moto_server

BUCKET = "r1flow-test"
MB = 1 << 20


@pytest.fixture(scope="session")
def s3_endpoint():
    with dummy_aws_env(), moto_server() as server:
        create_bucket(server.endpoint_url, BUCKET)
        yield server.endpoint_url


def _raw_s3(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return open_store(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    # 5 MB is S3's smallest part: files above it go multipart, so the test stays small.
    options = S3Options(multipart_threshold=5 * MB, multipart_chunksize=5 * MB)
    root = f"s3://{BUCKET}/run-{uuid.uuid4().hex[:8]}"
    return open_store(root, s3_endpoint_url=endpoint, s3_options=options)


def _raw_files(store: Store, key: str) -> dict[str, bytes]:
    """What is physically under key, read around the store (manifest or not)."""
    if isinstance(store, LocalStore):
        base = store.root / key
        return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}
    assert isinstance(store, S3Store)
    s3, prefix = _raw_s3(store.endpoint), f"{store.prefix}/{key}/"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=store.bucket, Prefix=prefix).get("Contents", [])]
    return {k[len(prefix) :]: s3.get_object(Bucket=store.bucket, Key=k)["Body"].read() for k in keys}


def _tamper(store: Store, key: str, path: str, data: bytes) -> None:
    """Overwrite one stored file behind the store's back."""
    if isinstance(store, LocalStore):
        (store.root / key / path).write_bytes(data)
    else:
        assert isinstance(store, S3Store)
        _raw_s3(store.endpoint).put_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}/{path}", Body=data)


def _make_dir(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


FILES = {"config.json": b'{"hidden": 8}', "weights.bin": bytes(range(256)) * 40, "tok/vocab.txt": b"a\nb\n"}


def test_digest_json_is_canonical_sha256():
    # Canonical form of {"b": 1, "a": [1, 2]} is '{"a":[1,2],"b":1}'.
    expected = hashlib.sha256(b'{"a":[1,2],"b":1}').hexdigest()
    assert digest_json({"b": 1, "a": [1, 2]}) == expected
    assert digest_json(S3Options()) == digest_json(S3Options().model_dump(mode="json"))
    assert digest_json({"a": 1}) != digest_json({"a": 2})


def test_artifact_ref_is_small_json_with_sub_uris():
    ref = ArtifactRef(uri="s3://b/p/artifacts/base/ab12", digest="0" * 64, meta={"stage": "base"})
    assert ref.sub("model/config.json") == "s3://b/p/artifacts/base/ab12/model/config.json"
    assert ArtifactRef.model_validate_json(ref.model_dump_json()) == ref


def test_round_trip(store: Store, tmp_path):
    src = _make_dir(tmp_path / "src", FILES)
    ref = store.put_dir(src, "artifacts/base/ab12", meta={"stage": "base", "mlflow_run_id": "r1"})
    assert ref.uri == store.resolve("artifacts/base/ab12") and ref.uri.startswith(store.root_uri)
    assert ref.meta == {"stage": "base", "mlflow_run_id": "r1"}
    assert store.exists(ref) and store.exists("artifacts/base/ab12")
    assert store.verify(ref) and store.verify(ref, deep=True)
    assert store.ref(ref.uri) == ref
    assert store.keys("artifacts") == ["artifacts/base/ab12"] == store.keys()

    m = store.manifest(ref)
    assert [f.path for f in m.files] == sorted(FILES)
    assert {f.path: f.sha256 for f in m.files} == {k: hashlib.sha256(v).hexdigest() for k, v in FILES.items()}

    out = store.get_dir(ref, tmp_path / "out")
    assert {p: (out / p).read_bytes() for p in FILES} == FILES
    assert (out / MANIFEST).is_file()
    # A downloaded folder can be stored again (its manifest is not part of the content) with the same digest.
    assert store.put_dir(out, "copy").digest == ref.digest


def test_put_replaces_and_drops_stale_files(store: Store, tmp_path):
    old = store.put_dir(_make_dir(tmp_path / "v1", {"a.txt": b"1", "b.txt": b"2"}), "ckpt")
    new = store.put_dir(_make_dir(tmp_path / "v2", {"a.txt": b"one"}), "ckpt")
    assert set(_raw_files(store, "ckpt")) == {"a.txt", MANIFEST}
    assert new.digest != old.digest
    assert store.verify(new) and not store.verify(old)  # the old ref no longer describes what is there
    with pytest.raises(CorruptArtifact, match="replaced"):
        store.get_dir(old, tmp_path / "out")


def test_upload_interrupted_before_manifest_does_not_exist(store: Store, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before the manifest")

    monkeypatch.setattr(store, "_write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        store.put_dir(_make_dir(tmp_path / "src", FILES), "ckpt/step-100")
    assert "weights.bin" in _raw_files(store, "ckpt/step-100")  # the files went up first
    assert not store.exists("ckpt/step-100") and not store.verify("ckpt/step-100")
    assert store.keys("ckpt") == []
    with pytest.raises(MissingArtifact, match="ckpt/step-100"):
        store.get_dir("ckpt/step-100", tmp_path / "out")


def test_corrupted_file_is_caught_by_name(store: Store, tmp_path):
    ref = store.put_dir(_make_dir(tmp_path / "src", FILES), "model")
    _tamper(store, "model", "weights.bin", bytes(len(FILES["weights.bin"])))  # same size, other bytes
    assert store.verify(ref)  # the cheap check only compares sizes
    assert not store.verify(ref, deep=True)
    with pytest.raises(CorruptArtifact, match="weights.bin"):
        store.get_dir(ref, tmp_path / "out")
    _tamper(store, "model", "config.json", b"{}")  # a size change fails even the cheap check
    assert not store.verify(ref)


def test_keys_lists_only_complete_artifacts(store: Store, tmp_path):
    src = _make_dir(tmp_path / "src", {"w.bin": b"w"})
    for step in (1, 10):
        store.put_dir(src, f"ckpt/step-{step}")
    store.write_json("ckpt/notes_manifest.json", {"not": "an artifact"})
    assert store.keys("ckpt") == ["ckpt/step-1", "ckpt/step-10"]
    assert store.keys("ckpt/step-1") == ["ckpt/step-1"]
    assert store.keys("nothing-here") == []


def test_empty_folder_is_refused(store: Store, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(StoreError, match="empty folder"):
        store.put_dir(tmp_path / "empty", "nothing")


def test_json_records_and_delete(store: Store, tmp_path):
    store.write_json("runs/r1/state.json", {"stage": "sft", "step": 3})
    store.write_json("runs/r1/state.json", {"stage": "sft", "step": 4})
    assert store.read_json("runs/r1/state.json") == {"stage": "sft", "step": 4}
    with pytest.raises(MissingArtifact):
        store.read_json("runs/r1/absent.json")

    ref = store.put_dir(_make_dir(tmp_path / "src", FILES), "gone")
    store.delete(ref)
    assert not store.exists(ref) and not store.verify(ref)
    assert _raw_files(store, "gone") == {}
    with pytest.raises(StoreError, match="key below the store root"):
        store.delete("")


def test_local_store_reads_in_place(tmp_path):
    store = open_store((tmp_path / "store").as_uri())
    assert isinstance(store, LocalStore) and repr(store) == f"LocalStore({str(tmp_path / 'store')!r})"
    ref = store.put_dir(_make_dir(tmp_path / "src", FILES), "data/cold_start")
    path = store.local_path(ref)
    assert path == tmp_path / "store" / "data" / "cold_start"
    assert sha256_file(path / "weights.bin") == hashlib.sha256(FILES["weights.bin"]).hexdigest()
    # A folder written straight into the store (a checkpoint) is committed in place by its manifest.
    ckpt = store.local_path("ckpt/step-5")
    _make_dir(ckpt, {"model.bin": b"w" * 10})
    assert not store.exists("ckpt/step-5")
    assert store.verify(store.put_dir(ckpt, "ckpt/step-5"), deep=True)
    with pytest.raises(StoreError, match="escapes"):
        store.put_dir(tmp_path / "src", "../outside")
    with pytest.raises(StoreError, match="not inside this store"):
        store.exists("s3://bucket/elsewhere")


def test_s3_large_file_goes_multipart(s3_endpoint, tmp_path):
    options = S3Options(multipart_threshold=5 * MB, multipart_chunksize=5 * MB)
    store = open_store(f"s3://{BUCKET}/multipart", s3_endpoint_url=s3_endpoint, s3_options=options)
    store.check()
    big = os.urandom(9 * MB)
    ref = store.put_dir(_make_dir(tmp_path / "src", {"model.safetensors": big, "config.json": b"{}"}), "m")
    head = _raw_s3(s3_endpoint).head_object(Bucket=BUCKET, Key="multipart/m/model.safetensors")
    assert head["ETag"].strip('"').endswith("-2")  # 9 MB in 5 MB parts: a multipart ETag "<md5>-2"
    assert store.verify(ref, deep=True)
    out = store.get_dir(ref, tmp_path / "out")
    assert sha256_file(out / "model.safetensors") == hashlib.sha256(big).hexdigest()


def test_s3_unreachable_endpoint_fails_fast_naming_it(s3_endpoint):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = open_store(f"s3://{BUCKET}/x", s3_endpoint_url=endpoint)
    for call in (store.check, lambda: store.exists("anything")):  # unreachable is never "absent"
        start = time.monotonic()
        with pytest.raises(StoreUnreachable, match=f"endpoint {endpoint}"):
            call()
        assert time.monotonic() - start < 10


def test_s3_missing_bucket_is_named(s3_endpoint):
    store = open_store("s3://no-such-bucket/x", s3_endpoint_url=s3_endpoint)
    with pytest.raises(StoreError, match="no-such-bucket"):
        store.check()


def test_s3_secret_never_leaks(s3_endpoint, tmp_path, monkeypatch):
    secret = "sEcReT-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    store = open_store(f"s3://{BUCKET}/secrets", s3_endpoint_url=s3_endpoint)
    ref = store.put_dir(_make_dir(tmp_path / "src", FILES), "a")
    assert secret not in repr(store) and secret not in str(store)
    assert secret not in ref.model_dump_json()
    assert secret not in store.manifest(ref).to_bytes().decode()
    assert s3_endpoint in repr(store)
    copy = pickle.loads(pickle.dumps(store))  # the client is rebuilt, not serialized
    assert secret.encode() not in pickle.dumps(store) and copy.verify(ref, deep=True)
