"""Shared test setup: offline hub, a private state folder per session, quiet Prefect."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("R1FLOW_SHARED_DATA", "/work/shared/data"))  # real benchmarks, hub configs
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# a hub cache of the session's own, set before anything imports huggingface_hub (which reads it once):
# the ``hub_cache`` fixture fills it with small random-weight models on real configs and tokenizers
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="r1flow-hub-cache-")
atexit.register(shutil.rmtree, os.environ["HF_HUB_CACHE"], ignore_errors=True)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"


_PREFECT_API: list[str] = []  # set by the ``prefect_api`` fixture: CLI runs then use that server


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for an ``r1flow`` subprocess with its own state folder (and the session's Prefect
    server when a test module uses ``prefect_api``; else Prefect's ephemeral API)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
    if _PREFECT_API:
        env["PREFECT_API_URL"] = _PREFECT_API[0]
    env.update(R1FLOW_HOME=str(home), PREFECT_HOME=str(home / "prefect"), HF_HUB_OFFLINE="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90", **extra)
    return env


def r1flow(args: list[str], home: Path, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
    """Run the installed CLI (as ``python -m flows.cli``) in the repo root."""
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=cli_env(home, **extra),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="module")
def pool():
    """A grading pool (``r1flow.rewards``) with two workers, for the reward tests."""
    from r1flow.rewards import GradingPool

    with GradingPool(workers=2) as grading_pool:
        yield grading_pool


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[str]:
    """A real ``prefect server start`` on loopback (sqlite in its own PREFECT_HOME), once per
    session: each CLI run then skips the ~8 s start of an ephemeral API."""
    from tests.s3server import free_port

    home, port = tmp_path_factory.mktemp("prefect-server"), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",  # the UI on: the browser test
               PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api")
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="session")
def micro_home(tmp_path_factory, prefect_server) -> tuple[Path, subprocess.CompletedProcess]:
    """One real run of the ``micro`` pipeline, named "first", on the session's Prefect server: the
    modules that read it or build on it (``test_pipeline``, ``test_scale_out``) share it."""
    home = tmp_path_factory.mktemp("r1flow-home")
    first = r1flow(["run", "--preset", "micro", "--name", "first"], home, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1",
                   PREFECT_API_URL=prefect_server)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    return home, first


@pytest.fixture(scope="module")
def prefect_api(prefect_server) -> Iterator[str]:
    """Use in a module (``pytestmark = pytest.mark.usefixtures("prefect_api")``) to send its CLI
    runs to the session's Prefect server."""
    _PREFECT_API.append(prefect_server)
    yield prefect_server
    _PREFECT_API.clear()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two threads
    spin (measured 7-90x slower while other processes ran)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


HUB_MODELS = {  # hub id -> (folder in shared/data/hub, shrunk shape): the real vocabulary and special tokens
    "Qwen/Qwen2.5-Math-1.5B": "Qwen--Qwen2.5-Math-1.5B",
    "Qwen/Qwen2.5-0.5B": "Qwen--Qwen2.5-0.5B",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": "deepseek-ai--DeepSeek-R1-Distill-Qwen-32B",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "HuggingFaceTB--SmolLM2-135M-Instruct",
}


def shrunk_model_folder(hub_folder: Path, dest: Path, seed: int = 0, *, classifier: bool = False,
                        drop_pad: bool = False) -> Path:
    """A random-weight model on a real config, shrunk (2 layers, width 64, one KV head) with the real
    vocabulary, special-token ids and tokenizer files: what a hub checkpoint looks like to r1flow,
    at a size a CPU test can train. ``classifier``: a one-label sequence classifier (a reward
    model) with a head large enough that scores differ visibly between texts; ``drop_pad``: no
    ``pad_token_id`` in its config."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    values = json.loads((hub_folder / "config.json").read_text())
    values.update(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=128, head_dim=32, max_window_layers=2)
    if drop_pad:
        values.pop("pad_token_id", None)
    dest.mkdir(parents=True)
    (dest / "config.json").write_text(json.dumps(values))
    torch.manual_seed(seed)
    if classifier:
        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(dest, num_labels=1))
        with torch.no_grad():
            model.score.weight.normal_(0, 0.1)
    else:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(dest))
    model.save_pretrained(dest)
    for f in hub_folder.iterdir():
        if f.name not in ("config.json", "LICENSE"):
            shutil.copy(f, dest / f.name)
    return dest


@pytest.fixture(scope="session")
def hub_cache() -> Path:
    """``HF_HUB_CACHE`` filled in hub layout (``models--org--name/snapshots/<sha>`` + ``refs/main``)
    with ``HUB_MODELS``: hub ids resolve offline exactly as they would after a download."""
    import hashlib

    if not SHARED_DATA.joinpath("hub").is_dir():
        pytest.skip(f"the real hub configs and tokenizers are not here: {SHARED_DATA / 'hub'}")
    cache = Path(os.environ["HF_HUB_CACHE"])
    for repo, folder in HUB_MODELS.items():
        root = cache / f"models--{repo.replace('/', '--')}"
        if root.is_dir():
            continue
        sha = hashlib.sha1(repo.encode()).hexdigest()
        shrunk_model_folder(SHARED_DATA / "hub" / folder, root / "snapshots" / sha)
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text(sha)
    return cache
