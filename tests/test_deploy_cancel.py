"""A stage launched on another pool belongs to the pipeline that launched it (REAL Prefect server).

No worker serves the "GPU" pool here, so the stage's flow run waits Scheduled — which is what a
stage looks like while the GPU pool is busy. Then: ``launch.timeout_s`` passes (the stage run is
cancelled, the pipeline fails saying so, and does not retry); a person cancels the stage run (the
pipeline stops at once, no retry); the pipeline itself is terminated (its stage run is cancelled).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env
from tests.test_deploy import prefect

pytestmark = pytest.mark.cluster
LAUNCH = ["--set", "base.launch.kind=deployment"]


async def _stage_runs() -> dict[str, str]:
    """State of every flow run of deployment r1-stage/base, by flow run id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        deployment = await client.read_deployment_by_name("r1-stage/base")
        runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
        return {str(r.id): r.state.name for r in runs}


def _runs(server: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server}):
        return asyncio.run(_stage_runs())


def _new_run(server: str, before: set[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = set(_runs(server)) - before
        if new:
            return new.pop()
        time.sleep(1)
    raise AssertionError("the pipeline started no stage flow run")


def _until(server: str, run_id: str, states: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while (state := _runs(server)[run_id]) not in states and time.monotonic() < deadline:
        time.sleep(1)
    return state


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, prefect_server):
    home = tmp_path_factory.mktemp("cancel-home")
    env = cli_env(home, PREFECT_API_URL=prefect_server, R1FLOW_REPO=str(REPO))
    prefect(["work-pool", "create", "r1flow-gpu", "--type", "process", "--overwrite"], env)
    prefect(["deploy", "--prefect-file", "deployments/prefect.yaml", "-n", "base"], env)
    return env


def _r1_zero(env, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "r1-zero", "--preset", "micro", "--name", name,
                             *LAUNCH, *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_timeout_cancels_the_stage_run_and_is_not_retried(deployed, prefect_server):
    before = set(_runs(prefect_server))
    out, err = _r1_zero(deployed, "timed-out", "--set", "base.launch.timeout_s=3").communicate(timeout=300)
    assert "did not finish within launch.timeout_s=3" in err, err[-3000:]
    new = {k: v for k, v in _runs(prefect_server).items() if k not in before}
    assert list(new.values()) == ["Cancelled"], new  # one stage run (no retry), cancelled


def test_a_person_cancelling_the_stage_run_stops_the_pipeline(deployed, prefect_server):
    before = set(_runs(prefect_server))
    proc = _r1_zero(deployed, "user-cancelled")
    child = _new_run(prefect_server, before)
    prefect(["flow-run", "cancel", child], deployed)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "was cancelled" in err and "not retried" in err, err[-3000:]
    assert set(_runs(prefect_server)) - before == {child}


def test_a_terminated_pipeline_cancels_its_stage_run(deployed, prefect_server):
    before = set(_runs(prefect_server))
    proc = _r1_zero(deployed, "terminated")
    child = _new_run(prefect_server, before)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert _until(prefect_server, child, {"Cancelled"}) == "Cancelled"


def test_a_pool_running_other_r1flow_code_refuses_before_any_work(deployed, prefect_server, tmp_path):
    """The GPU pool's worker runs a copy of the repository whose library differs by one line: the
    stage run computes another cache key than the pipeline, and refuses at once (exit 2, no retry,
    no stage process, nothing published) naming both code versions."""
    import shutil

    copy = tmp_path / "other-r1flow"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".venv", ".git", ".r1flow", "__pycache__"))
    with open(copy / "r1flow" / "__init__.py", "a") as f:
        f.write("# a newer r1flow on the GPU pool\n")
    env = {**deployed, "R1FLOW_REPO": str(copy), "PYTHONPATH": str(copy)}
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "r1flow-gpu",
                               "--limit", "1"], cwd=copy, env=env, stdout=open(tmp_path / "gpu.log", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    before = set(_runs(prefect_server))
    try:
        out, err = _r1_zero(deployed, "other-code").communicate(timeout=300)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    assert "KeyMismatch" in err and "deploy the same r1flow on every pool" in err, err[-3000:]
    assert list({k: v for k, v in _runs(prefect_server).items() if k not in before}.values()) == ["Failed"]
    home = Path(deployed["R1FLOW_HOME"])
    assert not (home / "store" / "artifacts" / "base").exists()
