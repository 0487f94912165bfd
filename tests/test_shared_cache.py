"""One cache across workers: Prefect's records of finished stages live in the store every worker shares.

"Machine A" runs the ``micro`` pipeline with its store on S3 (a real ``moto_server``); "machine B"
shares only that store and the MLflow tracking database: its own state folder (``R1FLOW_HOME``)
and its own Prefect API (ephemeral, in that folder). B must skip every stage as ``Cached`` in
Prefect — no task body, no stage process, no stage run in MLflow — because the cache records A
wrote are in the store, not in A's home. A record whose artifact vanished from the store is
dropped there, so that stage re-runs (DESIGN: a hit counts only if the output still verifies).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1flow.config import STAGES
from tests.conftest import r1flow
from tests.prefect_states import flow_run_id, prefect_states
from tests.s3server import create_bucket, dummy_aws_env, moto_server

BUCKET, PREFIX = "shared", "r1"


def _s3(endpoint_url: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")


def _keys(endpoint_url: str, prefix: str) -> list[str]:
    pages = _s3(endpoint_url).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _mlflow(home: Path):
    from r1flow import mlflow_runs

    return mlflow_runs, f"sqlite:///{home / 'mlflow.db'}"


@pytest.fixture(scope="module")
def s3():
    with moto_server() as server, dummy_aws_env() as aws:
        create_bucket(server.endpoint_url, BUCKET)
        yield server.endpoint_url, aws


def test_store_records_round_trip_and_a_stale_one_is_dropped(s3, tmp_path):
    """The record storage Prefect is given reads back what it wrote, from S3 and from a folder;
    a missing record reads as None (Prefect: no cache hit); a record whose output does not verify
    is dropped from the store."""
    from flows.run import StoreRecords
    from r1flow.cache import drop_stale_record
    from r1flow.store import open_store

    endpoint, _ = s3
    for root, url in ((f"s3://{BUCKET}/unit", endpoint), (str(tmp_path / "store"), None)):
        records = StoreRecords(store_root=root, s3_endpoint_url=url)
        assert records.read_path("k" * 64) is None
        content = json.dumps({"metadata": {"storage_key": "k" * 64}, "result": "abc"}).encode()
        records.write_path("k" * 64, content)
        assert json.loads(records.read_path("k" * 64)) == json.loads(content)
        store = open_store(root, s3_endpoint_url=url)
        assert not drop_stale_record(store, "x" * 64, "artifacts/none/x")  # no record: nothing to drop
        assert drop_stale_record(store, "k" * 64, "artifacts/none/k")  # its output never verified
        assert records.read_path("k" * 64) is None


@pytest.fixture(scope="module")
def two_machines(s3, tmp_path_factory):
    endpoint, aws = s3
    a, b = tmp_path_factory.mktemp("machine-a"), tmp_path_factory.mktemp("machine-b")
    env = {**aws, "MLFLOW_TRACKING_URI": f"sqlite:///{a / 'mlflow.db'}"}
    args = ["run", "--preset", "micro", "--set", f"store.root=s3://{BUCKET}/{PREFIX}",
            "--set", f"store.s3_endpoint_url={endpoint}"]
    first = r1flow([*args, "--name", "on-a"], a, **env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return a, b, args, env


@pytest.mark.slow  # two micro pipelines over S3 (~3 min); the default run's resume test covers a second home
def test_a_second_home_reuses_every_stage_as_cached(s3, two_machines):
    endpoint, _ = s3
    a, b, args, env = two_machines
    second = r1flow([*args, "--name", "on-b"], b, **env)
    text = second.stdout + second.stderr
    assert second.returncode == 0, text[-4000:]
    states = prefect_states(b, flow_run_id(second.stdout))  # B's own Prefect API
    assert len(states["tasks"]) == len(STAGES) and set(states["tasks"].values()) == {"Cached"}, states
    assert "output already published" not in text  # not even a task body ran
    mlflow_runs, uri = _mlflow(a)
    (parent,) = mlflow_runs.find_pipeline_runs(uri, "on-b")
    assert mlflow_runs.child_runs(uri, parent) == []  # no stage process, no stage run
    assert {parent.data.tags[f"r1flow.stage.{s}.state"] for s in STAGES} == {"cached"}
    records = _keys(endpoint, f"{PREFIX}/prefect-results/")
    assert len(records) == len(STAGES), records  # one per stage, in the shared store
    assert not any(p.is_file() for p in b.rglob("prefect-results/*")), "nothing cached per machine"


@pytest.mark.slow
def test_a_record_whose_artifact_vanished_reruns_that_stage_only(s3, two_machines):
    endpoint, _ = s3
    a, b, args, env = two_machines
    attempt = _s3(endpoint).get_object(Bucket=BUCKET, Key=f"{PREFIX}/runs/on-a/stages/distill.json")
    record = json.loads(attempt["Body"].read())
    manifest = f"{PREFIX}/artifacts/distill/{record['key'][:24]}/manifest.json"
    _s3(endpoint).delete_object(Bucket=BUCKET, Key=manifest)
    again = r1flow([*args, "--name", "on-b-again"], b, **env)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    mlflow_runs, uri = _mlflow(a)
    (parent,) = mlflow_runs.find_pipeline_runs(uri, "on-b-again")
    states = {s: parent.data.tags[f"r1flow.stage.{s}.state"] for s in STAGES}
    assert {s for s, v in states.items() if v != "cached"} == {"distill"}, states
    assert states["distill"] == "done"
    assert manifest in _keys(endpoint, manifest)  # published again
