"""Shared test setup: offline hub, a private state folder per session, quiet Prefect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for an ``r1flow`` subprocess with its own state folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
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


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two threads
    spin (measured 7-90x slower while other processes ran)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
