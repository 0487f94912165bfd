"""What a team sharing GPU workers needs from each stage it runs there:

- **its disk back**: inputs a stage downloaded from S3 are gone when it ends — done, failed,
  stopped by SIGTERM, or SIGKILLed (then the next stage on the worker sweeps them); only the
  metrics still waiting for MLflow stay;
- **no pointless retries**: a stage whose own code raised (a tokenizer that cannot load) fails
  once, naming the exception; a stage process killed by a signal is retried;
- **timeouts that fit the work**: the collective timeout and the stuck-run alert follow the
  preset's estimate (``r1flow estimate``) unless set explicitly.

Real stage processes, a real S3 endpoint (moto_server) and the real CLI; nothing mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from r1flow.config import load_config
from r1flow.stages.runner import StageSpec
from r1flow.store import ArtifactRef, open_store
from tests.conftest import REPO, r1flow
from tests.s3server import create_bucket, dummy_aws_env, moto_server

KEPT = {"metric-spill", "unsent-metrics"}  # metrics waiting for MLflow: meant to outlive the stage
BAD_TOKENIZER = "Truncation side should be selected between 'right' and 'left'"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model folder, and a copy whose tokenizer cannot load (a ValueError in transformers)."""
    from r1flow.modeling import ModelArch, build_model, save_model, train_tokenizer

    root = tmp_path_factory.mktemp("models")
    tok = train_tokenizer(["q 1 + 2 = 3 a b c <think> </think> <answer> </answer>"] * 20, 300)
    arch = ModelArch(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)
    save_model(build_model(arch, tok, seed=0), tok, root / "good" / "model")
    shutil.copytree(root / "good", root / "bad")
    config = root / "bad" / "model" / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "truncation_side": "middle"}))
    return root / "good", root / "bad"


@pytest.fixture(scope="module")
def s3(models) -> tuple[str, ArtifactRef, ArtifactRef]:
    """A moto_server with both models published as artifacts of an ``s3://`` store."""
    with moto_server() as server, dummy_aws_env():
        create_bucket(server.endpoint_url, "r1flow")
        store = open_store("s3://r1flow/runs", s3_endpoint_url=server.endpoint_url)
        good, bad = (store.put_dir(folder, f"artifacts/base/{folder.name}") for folder in models)
        yield server.endpoint_url, good, bad


def _spec(tmp_path: Path, endpoint: str, model: ArtifactRef, work: Path, **evaluate) -> Path:
    """An evaluation stage of ``model`` (read from S3) with its work root at ``work``."""
    cfg = load_config("micro")
    runtime = {**cfg.shared(), "evaluate": {**cfg.evaluate.model_dump(mode="json"), **evaluate}}
    spec = StageSpec(stage="evaluation", config=cfg.evaluation.model_dump(mode="json"), runtime=runtime,
                     inputs={"model": model}, output_key=f"artifacts/evaluation/{uuid.uuid4().hex[:12]}",
                     store_root="s3://r1flow/runs", s3_endpoint_url=endpoint, work_root=str(work))
    path = tmp_path / f"spec-{uuid.uuid4().hex[:8]}.json"
    path.write_text(spec.model_dump_json())
    return path


def _start(spec: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "r1flow.stages", str(spec)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _left(work: Path) -> list[str]:
    """What a stage left under its work root, besides the folders meant to stay."""
    return sorted(str(p.relative_to(work)) for p in work.iterdir() if p.name not in KEPT)


def test_a_stage_leaves_nothing_behind_when_it_succeeds_or_fails(s3, tmp_path):
    endpoint, good, bad = s3
    work = tmp_path / "work"
    done = _start(_spec(tmp_path, endpoint, good, work))
    out = done.communicate(timeout=300)[0]
    assert done.returncode == 0, out[-3000:]
    assert _left(work) == []
    failed = _start(_spec(tmp_path, endpoint, bad, work))
    out = failed.communicate(timeout=300)[0]
    assert failed.returncode != 0 and BAD_TOKENIZER in out, out[-3000:]
    assert _left(work) == []


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, marks=pytest.mark.slow), signal.SIGKILL])
def test_a_stopped_stage_leaves_nothing_behind(s3, tmp_path, sig):
    """SIGTERM (a cancelled run) cleans up at once; after a SIGKILL (the OOM killer) the stage
    cannot, and the next stage process on the worker removes what the dead one left."""
    endpoint, good, bad = s3
    work = tmp_path / "work"
    proc = _start(_spec(tmp_path, endpoint, good, work, max_problems=500, k=8, max_new_tokens=64))
    deadline = time.monotonic() + 120
    while not list(work.rglob("manifest.json")):  # written last: the input is downloaded
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    proc.send_signal(sig)
    out = proc.communicate(timeout=120)[0]
    if sig == signal.SIGTERM:
        assert proc.returncode == 130, out[-3000:]
    else:
        assert proc.returncode == -signal.SIGKILL and _left(work)
        nxt = _start(_spec(tmp_path, endpoint, bad, work))  # fails fast: any stage will do
        nxt.communicate(timeout=300)
    assert _left(work) == []


def _attempts(home: Path, stage: str) -> list:
    """One MLflow run per attempt of ``stage`` (each attempt starts its own; none checkpointed)."""
    from r1flow import mlflow_runs

    client = mlflow_runs.client(f"sqlite:///{home / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`{mlflow_runs.TAG_STAGE}` = '{stage}'")


def test_a_stage_whose_code_raises_is_not_retried(models, tmp_path):
    home = tmp_path / "home"
    out = r1flow(["evaluate", str(models[1] / "model"), "--preset", "micro", "--name", "bad-tokenizer"], home)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-4000:]
    assert len(_attempts(home, "evaluation")) == 1  # was 2: the retry reloaded the model for nothing
    assert f"ValueError: {BAD_TOKENIZER}" in text and "not retried" in text, text[-4000:]


def _raised_while_handling(inner: Exception, outer: Exception) -> Exception:
    """``outer`` raised in the handler of ``inner``, as libraries wrap errors (MLflow, transformers)."""
    try:
        try:
            raise inner
        except type(inner):
            raise outer
    except type(outer) as exc:
        return exc


def test_transient_errors_are_told_from_the_stages_own():
    """What a stage process reports as a crash (retried) and as its own error (not retried)."""
    import httpx
    import requests
    import torch.distributed as dist
    from botocore.exceptions import EndpointConnectionError
    from mlflow.exceptions import MlflowException

    from r1flow.stages.runner import is_transient
    from r1flow.store import StoreUnreachable

    transient = [
        ConnectionResetError(104, "Connection reset by peer"), TimeoutError("timed out"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), StoreUnreachable("s3://b unreachable"),
        _raised_while_handling(requests.ConnectionError("Max retries exceeded"),
                               MlflowException("API request to http://mlflow/api failed")),
        _raised_while_handling(httpx.ConnectError("connection refused"),
                               OSError("We couldn't connect to 'https://huggingface.co' to load the files")),
        RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:38284"),
        dist.DistNetworkError("failed to recv, got 0 bytes"),
    ]
    own = [
        ValueError(BAD_TOKENIZER), KeyError("added_tokens"), OSError("no file named config.json"),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), TypeError("unexpected keyword"),
        _raised_while_handling(ValueError("bad row"), RuntimeError("could not build the batch")),
    ]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in own] == [False] * len(own)


def _stage_processes(home: Path) -> set[int]:
    """Stage processes of runs under ``home`` (their spec file lies in it)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"r1flow.stages" in args and any(a.startswith(str(home).encode()) for a in args):
            pids.add(int(proc.name))
    return pids


@pytest.mark.slow  # guards that the fix keeps crash retries: the kill tests of the default run retry too
def test_a_killed_stage_process_is_retried(models, tmp_path):
    """SIGKILL (the OOM killer, a lost node) is no verdict on the stage: it runs again, and passes."""
    home = tmp_path / "home"
    seen: set[int] = set()
    killed: list[int] = []
    done = threading.Event()

    def killer() -> None:
        while not done.is_set():
            for pid in _stage_processes(home) - seen:
                seen.add(pid)
                if not killed:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        out = r1flow(["evaluate", str(models[0] / "model"), "--preset", "micro", "--name", "killed"], home)
    finally:
        done.set()
        thread.join()
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert len(killed) == 1 and len(seen) == 2
    assert len(_attempts(home, "evaluation")) == 2


def test_the_collective_timeout_follows_the_stage_estimate(monkeypatch):
    from r1flow.estimate import stage_hours
    from r1flow.stages.runner import DEFAULT_COLLECTIVE_TIMEOUT_S, collective_timeout_s
    from tasks.stage import stage_collective_timeout_s

    monkeypatch.delenv("R1FLOW_COLLECTIVE_TIMEOUT_S", raising=False)
    qwen = load_config("qwen2.5-math-1.5b")
    hours = stage_hours(qwen, "reasoning_rl")
    assert hours > 3  # the estimate the timeout derives from (H100, default assumptions)
    derived = stage_collective_timeout_s(qwen, "reasoning_rl")
    assert derived > hours * 3600 and derived > DEFAULT_COLLECTIVE_TIMEOUT_S
    assert collective_timeout_s({"collective_timeout_s": derived}) == derived  # what the process uses
    monkeypatch.setenv("R1FLOW_COLLECTIVE_TIMEOUT_S", "120")  # set by hand: it wins
    assert collective_timeout_s({"collective_timeout_s": derived}) == 120
    monkeypatch.delenv("R1FLOW_COLLECTIVE_TIMEOUT_S")
    tiny = stage_collective_timeout_s(load_config("tiny"), "reasoning_rl")
    assert stage_hours(load_config("tiny"), "reasoning_rl") < 0.01 and tiny >= 3600  # a sane minimum
    unknown = load_config("qwen2.5-math-1.5b", sets=["base.teacher.source=someone/unknown-model"])
    assert stage_hours(unknown, "reasoning_rl") is None  # its size is unknown: today's default
    assert stage_collective_timeout_s(unknown, "reasoning_rl") == DEFAULT_COLLECTIVE_TIMEOUT_S
    assert collective_timeout_s({}) == DEFAULT_COLLECTIVE_TIMEOUT_S


def test_the_stuck_alert_waits_for_the_whole_pipeline_estimate():
    from flows.alerts import DEFAULT_STUCK_AFTER_S, stuck_after
    from r1flow.config import STAGES
    from r1flow.estimate import stage_hours

    seven_b = load_config("qwen2.5-math-7b")
    total = sum(stage_hours(seven_b, stage) or 0.0 for stage in STAGES)
    assert total * 3600 > DEFAULT_STUCK_AFTER_S  # the fixed 12 h would flag a healthy run
    assert stuck_after(seven_b) > total * 3600
    assert stuck_after(seven_b, explicit_s=600) == 600
    assert 3600 <= stuck_after(load_config("tiny")) < DEFAULT_STUCK_AFTER_S
    unknown = load_config("qwen2.5-math-1.5b", sets=["base.teacher.source=someone/unknown-model"])
    assert stuck_after(unknown) == stuck_after(None) == DEFAULT_STUCK_AFTER_S
