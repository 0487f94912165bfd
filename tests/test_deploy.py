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
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, r1flow

REMOTE = ("sft", "distill")  # the stages sent to the "GPU" pool
SHARDED = {"launch": {"kind": "deployment", "shards": 2}, "chunk_prompts": 8}  # 4 chunks: shards {0, 2}, {1, 3}


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
                "named": {c.name: {"state": c.state.name, "start": c.start_time, "end": c.end_time}
                          for c in children},
                "artifacts": {a.key: a.type for a in artifacts if a.key}, "deployments": sorted(deployments.values())}


@pytest.mark.cluster
def test_a_deployed_pipeline_runs_on_a_worker_with_stages_on_a_second_pool(tmp_path, prefect_server):
    home = tmp_path / "home"
    env = cli_env(home, PREFECT_API_URL=prefect_server, R1FLOW_REPO=str(REPO))
    for pool in ("r1flow-cpu", "r1flow-gpu"):
        prefect(["work-pool", "create", pool, "--type", "process", "--overwrite"], env)
    deployed = prefect(["deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env)
    assert "r1-pipeline/r1-pipeline" in deployed.stdout, deployed.stdout[-3000:]

    gpu_workers = [subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "r1flow-gpu",
                                     "--limit", "1", "--name", f"gpu-{i}"], cwd=REPO, env=env,
                                    stdout=open(tmp_path / f"gpu-{i}.log", "w"), stderr=subprocess.STDOUT,
                                    start_new_session=True) for i in range(2)]
    try:
        config = {"preset": "micro", **{s: {"launch": {"kind": "deployment"}} for s in REMOTE},
                  "rejection_sampling": SHARDED}
        started = prefect(["deployment", "run", "r1-pipeline/r1-pipeline", "--params",
                           json.dumps({"config": config, "name": "deployed"})], env)
        flow_run_id = next(line.split()[-1] for line in started.stdout.splitlines() if "UUID" in line)
        prefect(["worker", "start", "--pool", "r1flow-cpu", "--run-once"], env, timeout=900)
        # the nightly evaluation, by hand: the registered candidate, on the GPU pool's waiting workers
        nightly = prefect(["deployment", "run", "r1-evaluation/r1-evaluation", "--params", json.dumps(
            {"model": "models:/r1flow-micro@candidate", "name": "nightly",
             "config": {"preset": "micro", "evaluate": {"batch_size": 32},  # 24 problems in 3 batches of 8 ...
                        "evaluation": {"launch": {"shards": 2}}}})], env)  # ... on 2 shards: {0, 2}, {1}
        nightly_id = next(line.split()[-1] for line in nightly.stdout.splitlines() if "UUID" in line)
        nightly_state = _wait_final(prefect_server, nightly_id)
    finally:
        for worker in gpu_workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in gpu_workers:
            worker.wait(timeout=60)

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        seen = asyncio.run(_read_back(flow_run_id))
    log = "\n".join((tmp_path / f"gpu-{i}.log").read_text()[-2000:] for i in range(2))
    assert seen["state"] == "Completed", (seen, log)
    assert {"r1-pipeline", "r1-zero", "r1-evaluation", "sft", "distill", "base"} <= set(seen["deployments"])
    assert seen["children"] == {s: "Completed" for s in (*REMOTE, "rejection_sampling")}, (seen, log)
    # sharded rejection sampling: two shard flow runs side by side on the two workers, then the merge
    shard_runs = {n: c for n, c in seen["named"].items() if n.startswith("rejection_sampling-")}
    assert sorted(shard_runs) == ["rejection_sampling-merge", "rejection_sampling-shard-1-of-2",
                                  "rejection_sampling-shard-2-of-2"], seen["named"]
    assert all(c["state"] == "Completed" for c in shard_runs.values()), shard_runs
    first, second = (shard_runs[f"rejection_sampling-shard-{i}-of-2"] for i in (1, 2))
    assert first["start"] < second["end"] and second["start"] < first["end"], shard_runs  # side by side
    assert shard_runs["rejection_sampling-merge"]["start"] >= max(first["end"], second["end"])
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

    # the two shards' dataset is the one a single unsharded process makes (regenerated here, in place)
    from r1flow.store_local import LocalStore

    store = LocalStore(home / "store")
    data = parent.data.tags["r1flow.stage.rejection_sampling.uri"]
    sharded = (store.manifest(data).digest, (store.local_path(data) / "sft.jsonl").read_text())
    straight = r1flow(["stage", "rejection_sampling", "--preset", "micro", "--name", "deployed", "--refresh", "--set",
                       "rejection_sampling.chunk_prompts=8"], home, PREFECT_API_URL=prefect_server)
    assert straight.returncode == 0 and data in straight.stdout, straight.stdout[-3000:] + straight.stderr[-3000:]
    assert "reused" not in straight.stdout + straight.stderr  # --refresh: every chunk generated again
    assert (store.manifest(data).digest, (store.local_path(data) / "sft.jsonl").read_text()) == sharded

    assert nightly_state == "Completed", log
    logs = "".join((tmp_path / f"gpu-{i}.log").read_text() for i in range(2))
    assert "shard 2/2: evaluation shard 2 of 2: its samples are saved" in logs, log
    assert "evaluation arith_heldout: reused 3 saved chunk(s)" in logs, log
    version = mlflow_runs.client(uri).get_model_version_by_alias("r1flow-micro", "candidate")
    (evaluation,) = mlflow_runs.child_runs(uri, mlflow_runs.find_pipeline_runs(uri, "nightly")[0])
    assert version.tags["r1flow.evaluated.run"] == evaluation.info.run_id
    assert evaluation.data.tags["r1flow.evaluated_uri"] == version.source == parent.data.tags["r1flow.stage.final_rl.uri"]


def _wait_final(server: str, flow_run_id: str, timeout: float = 600) -> str:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: server}), get_client(sync_client=True) as client:
        while (state := client.read_flow_run(flow_run_id).state) is None or not state.is_final():
            if time.monotonic() > deadline:
                return state.name if state else "None"
            time.sleep(2)
        return state.name


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[str] = []

    def do_POST(self):  # noqa: N802 - the http.server hook name
        self.received.append(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.cluster
def test_alerts_flag_a_stuck_then_failed_run(tmp_path, prefect_server):
    """``r1flow alerts`` installs the automations; the server's own triggers then POST a "stuck"
    notice while an R1-Zero run is still going (threshold 18 s) and a "failed" one when it fails
    (its r1_zero stage is killed in both attempts)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    home = tmp_path / "home"
    env = cli_env(home, PREFECT_API_URL=prefect_server)
    installed = subprocess.run([sys.executable, "-m", "flows.cli", "alerts", "--webhook-url",
                                f"http://127.0.0.1:{server.server_port}/", "--allow-private-urls",
                                "--stuck-after-hours", "0.005"], cwd=REPO, env=env, capture_output=True,
                               text=True, timeout=300)
    assert installed.returncode == 0 and installed.stdout.count("automation installed") == 2, installed.stderr[-3000:]
    faults = f"r1_zero:300:{home / 'k1'},r1_zero:300:{home / 'k2'}"
    run = subprocess.run([sys.executable, "-m", "flows.cli", "r1-zero", "--preset", "micro", "--name", "alerted",
                          "--set", "r1_zero.grpo.steps=400"], cwd=REPO, env={**env, "R1FLOW_FAULT_KILL": faults},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    deadline = time.time() + 120
    while time.time() < deadline and not any("run failed" in body for body in _Receiver.received):
        time.sleep(1)
    server.shutdown()
    notices = _Receiver.received
    assert any("r1flow run stuck" in body and "r1-zero" in body for body in notices), notices
    assert any("r1flow run failed" in body and "Failed" in body for body in notices), notices


@pytest.mark.parametrize("kind,name", [("kubernetes", "kubernetes-gpu"), ("docker", "docker-gpu"),
                                       ("kubernetes", "kubernetes-gpu-multinode")])
def test_gpu_pool_templates_are_accepted_by_the_server(tmp_path, prefect_server, kind, name):
    """The GPU base job templates: every placeholder has a variable (GPUs, node selector,
    tolerations, device requests, the credentials secret; machines and the shared store for the
    multi-node Indexed Job), and a real server creates the pool."""
    import re

    path = REPO / "deployments" / "work-pools" / f"{name}.json"
    template = json.loads(path.read_text())
    placeholders = set(re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert placeholders <= set(template["variables"]["properties"]), placeholders
    expected = {"kubernetes-gpu": {"gpus", "node_selector", "tolerations", "credentials_secret"},
                "docker-gpu": {"container_create_kwargs"},
                "kubernetes-gpu-multinode": {"gpus", "machines", "headless_service", "store_root"}}[name]
    assert expected <= placeholders
    if kind == "kubernetes":  # Job fields on the Job, pod fields on the pod
        job = template["job_configuration"]["job_manifest"]["spec"]
        assert not {"parallelism", "completions"} & set(job["template"]["spec"])
        if name.endswith("multinode"):
            assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == "{{ machines }}"
            (container,) = job["template"]["spec"]["containers"]
            assert container["command"] == ["/opt/r1flow/docker/multinode-entry.sh"]
            assert (REPO / "docker" / "multinode-entry.sh").stat().st_mode & 0o111
    env = cli_env(tmp_path / "home", PREFECT_API_URL=prefect_server)
    prefect(["work-pool", "create", f"r1flow-{name}", "--type", kind, "--base-job-template", str(path),
             "--overwrite"], env)
    shown = prefect(["work-pool", "inspect", f"r1flow-{name}"], env)
    assert kind in shown.stdout
