"""Resuming a failed pipeline run through the real CLI, Prefect (ephemeral API) and MLflow (sqlite).

A run of the R1-Zero flow (``micro``) whose r1_zero stage is SIGKILLed twice — once per attempt,
so the task's one crash retry also dies — fails; then:
- ``r1flow resume NAME`` on another "machine" (a fresh state folder sharing only the S3 store and
  MLflow) with a changed stage config is refused before anything runs (exit 2, the changed field
  named); without the change it continues from the newest checkpoint in the same MLflow parent
  and stage runs;
- ``--allow-config-change`` continues from that checkpoint in a new stage run linked to the old;
- ``prefect flow-run retry`` of the failed flow run resumes it the same way;
- SIGTERM to the CLI mid-stage (a cancelled run) ends the stage and parent runs KILLED.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, r1flow
from tests.s3server import create_bucket, dummy_aws_env, moto_server

pytestmark = pytest.mark.usefixtures("prefect_api")  # one real Prefect server for the module's runs

FAST = ["--preset", "micro", "--set", "r1_zero.checkpoint_every=1", "--set", "r1_zero.grpo.log_every=1"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("r1flow-resume-home")


def _client(home: Path):
    from r1flow import mlflow_runs

    return mlflow_runs.client(f"sqlite:///{home / 'mlflow.db'}")


def _runs(home: Path, query: str) -> list:
    c = _client(home)
    return c.search_runs([e.experiment_id for e in c.search_experiments()], query, order_by=["start_time ASC"])


def _stage_runs(home: Path, name: str, stage: str = "r1_zero") -> list:
    return _runs(home, f"tags.`r1flow.pipeline` = '{name}' and tags.`r1flow.stage` = '{stage}'")


def _parents(home: Path, name: str) -> list:
    return [r for r in _runs(home, f"tags.`r1flow.pipeline` = '{name}'") if "mlflow.parentRunId" not in r.data.tags]


def _crash_twice(home: Path, name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """An R1-Zero run whose r1_zero dies after step 1, and its retry after step 2: the run fails."""
    faults = f"r1_zero:1:{home / (name + '-1')},r1_zero:2:{home / (name + '-2')}"
    seed = sum(map(ord, name))  # each test its own r1_zero cache key: no test reuses another's output
    out = r1flow(["r1-zero", *FAST, "--set", f"r1_zero.grpo.seed={seed}", *args, "--name", name], home,
                 R1FLOW_FAULT_KILL=faults, **env)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert (home / (name + "-2")).exists()  # both attempts were killed
    (run,) = _stage_runs(home, name)
    assert run.info.status == "FAILED"
    assert [p.info.status for p in _parents(home, name)] == ["FAILED"]
    return out


def _steps(home: Path, run_id: str) -> list[int]:
    return sorted({m.step for m in _client(home).get_metric_history(run_id, "reward/mean")})


def test_resume_on_another_machine_refuses_a_changed_config_then_continues_in_the_same_runs(home, tmp_path):
    """The run crashes on "machine A" with its store on S3 (a real moto_server); "machine B" shares
    only that store and the MLflow tracking database — a fresh state folder, no Prefect records —
    and resumes it there."""
    with moto_server() as s3, dummy_aws_env() as aws:
        create_bucket(s3.endpoint_url, "runs")
        on_s3 = ["--set", "store.root=s3://runs/r1", "--set", f"store.s3_endpoint_url={s3.endpoint_url}"]
        _crash_twice(home, "crashy", *on_s3, **aws)
        machine_b = tmp_path / "machine-b"
        env = {**aws, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
        refused = r1flow(["resume", "crashy", "--set", "r1_zero.grpo.lr=0.001"], machine_b, **env)
        assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
        assert "grpo.lr: 0.0001 -> 0.001" in refused.stderr and "--allow-config-change" in refused.stderr
        assert "s3://runs/r1/checkpoints/r1_zero/" in refused.stderr  # the checkpoint it would lose
        assert len(_stage_runs(home, "crashy")) == 1  # nothing ran

        out = r1flow(["resume", "crashy"], machine_b, **env)
        text = out.stdout + out.stderr
        assert out.returncode == 0, text[-4000:]
        assert "resuming from checkpoint s3://runs/r1/checkpoints/r1_zero/" in text and "step-00000002" in text
        (parent,) = _parents(home, "crashy")  # the same parent run, reopened and finished
        assert parent.info.status == "FINISHED"
        # A's Prefect record of base is in the store: base is Cached on B, its task body never ran
        assert parent.data.tags["r1flow.stage.base.state"] == "cached"
        assert "output already published" not in text
        (run,) = _stage_runs(home, "crashy")
        assert run.info.status == "FINISHED" and _steps(home, run.info.run_id) == [1, 2, 3]
        again = r1flow(["resume", "crashy"], machine_b, **env)
        assert again.returncode == 0 and "nothing to resume" in again.stdout


def test_allow_config_change_continues_from_the_checkpoint_in_a_linked_run(home):
    _crash_twice(home, "changed")
    (old,) = _stage_runs(home, "changed")
    out = r1flow(["resume", "changed", "--set", "r1_zero.grpo.lr=0.001", "--allow-config-change"], home)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "warm start (config changed) from checkpoint" in text
    new = [r for r in _stage_runs(home, "changed") if r.info.run_id != old.info.run_id]
    assert len(new) == 1 and new[0].info.status == "FINISHED"
    assert new[0].data.tags["r1flow.resumed_from_run"] == old.info.run_id
    assert new[0].data.tags["r1flow.resumed_from_checkpoint"].endswith("step-00000002")
    assert new[0].data.params["grpo.lr"] == "0.001"
    assert _steps(home, new[0].info.run_id) == [3]  # steps 1-2 came from the checkpoint


def test_prefect_flow_run_retry_resumes_a_failed_run(home):
    """Started with --refresh r1_zero: the retry replays that parameter, and still resumes (the
    refresh cleared the stage's checkpoints once, when the flow run first reached it)."""
    crashed = _crash_twice(home, "retried", "--refresh", "r1_zero")
    flow_run_id = next(line.split()[-1] for line in crashed.stdout.splitlines() if line.startswith("Prefect flow run:"))
    out = subprocess.run([sys.executable, "-m", "prefect", "flow-run", "retry", flow_run_id,
                          "--entrypoint", "flows/pipeline.py:r1_zero"], cwd=REPO, env=cli_env(home),
                         capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    (parent,) = _parents(home, "retried")
    assert parent.info.status == "FINISHED"
    (run,) = _stage_runs(home, "retried")
    assert run.info.status == "FINISHED" and _steps(home, run.info.run_id) == [1, 2, 3]
    assert run.data.tags["r1flow.resumes"] == "2"  # the task's own retry, then Prefect's


def test_a_cancelled_run_ends_killed_and_resumes(home):
    """SIGTERM to the CLI while r1_zero trains (as a cancelled run or a stopped worker does)."""
    args = [*FAST, "--set", "r1_zero.grpo.steps=200", "--name", "cancelled"]
    checkpoints = home / "store" / "checkpoints" / "r1_zero"
    earlier = set(checkpoints.glob("*/step-*/manifest.json"))  # other tests' runs share this store
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "r1-zero", *args], cwd=REPO, env=cli_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not set(checkpoints.glob("*/step-*/manifest.json")) - earlier and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, output[-3000:]
    (run,) = _stage_runs(home, "cancelled")
    assert run.info.status == "KILLED", output[-3000:]
    assert [p.info.status for p in _parents(home, "cancelled")] == ["KILLED"]
    record = json.loads((home / "store" / "runs" / "cancelled" / "pipeline.json").read_text())
    assert record["status"] == "killed"

    out = r1flow(["resume", "cancelled"], home)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    (run,) = _stage_runs(home, "cancelled")
    assert run.info.status == "FINISHED" and _steps(home, run.info.run_id) == list(range(1, 201))
