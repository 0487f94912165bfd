"""What the Prefect API recorded of a CLI run: the flow run's state, each task's state and the
progress artifacts — read in a subprocess with the run's own environment (its Prefect server)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO, cli_env

PREFECT_STATES = """
import asyncio, json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

async def main(flow_run_id):
    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        flow_run = await client.read_flow_run(flow_run_id)
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        print(json.dumps({"flow": flow_run.state.name,
                          "tasks": {r.name: r.state.name for r in runs},
                          "progress": [[a.data, a.description] for a in artifacts if a.type == "progress"]}))

asyncio.run(main(sys.argv[1]))
"""


def flow_run_id(stdout: str) -> str:
    return next(line.split()[-1] for line in stdout.splitlines() if line.startswith("Prefect flow run:"))


def prefect_states(home, run_id: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PREFECT_STATES, run_id], cwd=REPO, env=cli_env(home),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
