"""Deployments against a REAL Prefect server (``prefect server start`` on loopback, sqlite).

Two process work pools stand in for the CPU and GPU pools. ``prefect deploy`` registers every
deployment of ``deployments/prefect.yaml``; a worker on the GPU pool waits for stage runs; a run of
the pipeline deployment (the ``micro`` preset, with ``sft`` and ``distill`` launched as their own
flow runs on the GPU pool) is picked up by ``prefect worker start --run-once`` on the CPU pool and
executes to completion. The flow run's state, its task runs, the stage flow runs it launched and
its artifacts are then read back through the API, and MLflow links back to the flow run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env

REMOTE = ("sft", "distill")  # the stages sent to the "GPU" pool


def prefect(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


async def _read_back(flow_run_id: str) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                FlowRunFilterId, FlowRunFilterParentFlowRunId)

    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
        deployments = {d.id: d.name for d in await client.read_deployments()}
        return {"state": run.state.name, "tasks": {t.name: t.state.name for t in tasks},
                "children": {deployments.get(c.deployment_id, "?"): c.state.name for c in children},
                "artifacts": {a.key: a.type for a in artifacts if a.key}, "deployments": sorted(deployments.values())}


def test_a_deployed_pipeline_runs_on_a_worker_with_stages_on_a_second_pool(tmp_path, prefect_server):
    home = tmp_path / "home"
    env = cli_env(home, PREFECT_API_URL=prefect_server, R1FLOW_REPO=str(REPO))
    for pool in ("r1flow-cpu", "r1flow-gpu"):
        prefect(["work-pool", "create", pool, "--type", "process", "--overwrite"], env)
    deployed = prefect(["deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env)
    assert "r1-pipeline/r1-pipeline" in deployed.stdout, deployed.stdout[-3000:]

    gpu_worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "r1flow-gpu",
                                   "--limit", "1"], cwd=REPO, env=env, stdout=open(tmp_path / "gpu.log", "w"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        config = {"preset": "micro", **{s: {"launch": {"kind": "deployment"}} for s in REMOTE}}
        started = prefect(["deployment", "run", "r1-pipeline/r1-pipeline", "--params",
                           json.dumps({"config": config, "name": "deployed"})], env)
        flow_run_id = next(line.split()[-1] for line in started.stdout.splitlines() if "UUID" in line)
        prefect(["worker", "start", "--pool", "r1flow-cpu", "--run-once"], env, timeout=900)
    finally:
        os.killpg(gpu_worker.pid, signal.SIGTERM)
        gpu_worker.wait(timeout=60)

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        seen = asyncio.run(_read_back(flow_run_id))
    log = (tmp_path / "gpu.log").read_text()[-3000:]
    assert seen["state"] == "Completed", (seen, log)
    assert {"r1-pipeline", "r1-zero", "sft", "distill", "base"} <= set(seen["deployments"])
    assert seen["children"] == {s: "Completed" for s in REMOTE}, (seen, log)
    assert set(seen["tasks"]) >= {"base", "r1_zero", "reasoning_rl", "sft", "distill"}
    assert set(seen["tasks"].values()) == {"Completed"}, seen
    assert {"deployed-base", "deployed-reasoning-rl", "deployed-sft", "deployed-evaluation"} <= set(seen["artifacts"])

    from r1flow import mlflow_runs

    uri = f"sqlite:///{home / 'mlflow.db'}"
    parent = mlflow_runs.find_pipeline_runs(uri, "deployed")[0]
    assert parent.info.status == "FINISHED" and flow_run_id in parent.data.tags["prefect.flow_run_url"]
    stages = {c.data.tags[mlflow_runs.TAG_STAGE]: c for c in mlflow_runs.child_runs(uri, parent)}
    assert set(REMOTE) <= set(stages)  # the remote stages log under the pipeline's MLflow run
    assert all(stages[s].info.status == "FINISHED" for s in REMOTE)
    assert Path(home / "store" / "artifacts" / "sft").is_dir()
