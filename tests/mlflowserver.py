"""A real ``mlflow server`` on loopback for tests (fault injection, the browser test)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class Server:
    """``mlflow server`` on a fixed port with a sqlite store; its own process group, so stopping
    it stops uvicorn too."""

    def __init__(self, root: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.root, self.uri, self.proc = root, f"http://127.0.0.1:{self.port}", None

    def start(self, db: Path | None = None) -> None:
        """Serve ``db`` (default: a sqlite file in ``root``)."""
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{db or self.root / 'mlflow.db'}",
               "--default-artifact-root", str(self.root / "artifacts")]
        with open(self.root / "server.log", "a") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 90
        while not self.healthy():
            assert self.proc.poll() is None and time.monotonic() < deadline, (self.root / "server.log").read_text()
            time.sleep(0.25)

    def healthy(self, timeout: float = 1.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=timeout) as r:
                return r.status == 200
        except OSError:
            return False

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(5)
        time.sleep(0.5)  # uvicorn's worker exits with its parent's group
