"""Credentials never leave the environment: a run with known secret values (S3 keys for a real
moto_server store, MLflow tracking credentials) is grepped everywhere it wrote — its console
output, every file of its state folder (MLflow's database and artifacts, Prefect's database with
flow-run parameters, task results and logs, the work folder) and every object in the bucket."""

from __future__ import annotations

import os

import boto3

from tests.conftest import r1flow
from tests.s3server import create_bucket, moto_server

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAR1FLOWLEAKCHECK7",
    "AWS_SECRET_ACCESS_KEY": "r1flow-leakcheck-secret-access-key-41c9",
    "AWS_SESSION_TOKEN": "r1flow-leakcheck-session-token-77aa",
    "MLFLOW_TRACKING_USERNAME": "r1flow-leakcheck-user",
    "MLFLOW_TRACKING_PASSWORD": "r1flow-leakcheck-password-5e2d",
    "MLFLOW_TRACKING_TOKEN": "r1flow-leakcheck-token-9b1f",
}


def test_no_secret_reaches_logs_mlflow_prefect_or_artifacts(tmp_path):
    home = tmp_path / "home"
    with moto_server() as s3:
        env = {**SECRETS, "AWS_DEFAULT_REGION": "us-east-1"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            create_bucket(s3.endpoint_url, "leakcheck")
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        out = r1flow(["r1-zero", "--preset", "micro", "--name", "leakcheck",
                      "--set", "store.root=s3://leakcheck/r1", "--set", f"store.s3_endpoint_url={s3.endpoint_url}"],
                     home, **env)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1",
                              aws_access_key_id="x", aws_secret_access_key="y")
        objects = {o["Key"]: client.get_object(Bucket="leakcheck", Key=o["Key"])["Body"].read()
                   for page in client.get_paginator("list_objects_v2").paginate(Bucket="leakcheck")
                   for o in page.get("Contents", [])}
    assert any(k.startswith("r1/artifacts/r1_zero/") for k in objects)  # the run really used S3
    files = {str(p): p.read_bytes() for p in home.rglob("*") if p.is_file()}
    assert any(p.endswith("mlflow.db") for p in files) and any("prefect" in p for p in files)
    written = {"console": (out.stdout + out.stderr).encode(), **files, **objects}
    leaks = [(name, where) for name, value in SECRETS.items() for where, data in written.items()
             if value.encode() in data]
    assert not leaks, leaks
