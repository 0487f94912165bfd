"""Where a pipeline run lives: state folder, store, MLflow, and the settings every stage shares.

Embedded defaults (DESIGN "Embedded defaults"): the state folder is ``$R1FLOW_HOME`` (default
``./.r1flow``); MLflow is ``sqlite:///$R1FLOW_HOME/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` is
set; the artifact store is ``$R1FLOW_HOME/store`` unless the config names a root
(``s3://bucket/prefix`` included). A ``Runtime`` is small, serializable and passed to each stage
task; nothing in it is secret (credentials stay in the environment / boto3 chain).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from r1flow import mlflow_runs
from r1flow.store import Store, open_store

REPO = Path(__file__).resolve().parent.parent


def default_home() -> Path:
    return Path(os.environ.get("R1FLOW_HOME", ".r1flow")).expanduser().resolve()


class Runtime(BaseModel):
    model_config = ConfigDict(extra="forbid")
    home: Path = Field(default_factory=default_home)
    pipeline_name: str = "r1"
    store_root: str = ""
    s3_endpoint_url: str | None = None
    tracking_uri: str = ""
    experiment: str = mlflow_runs.EXPERIMENT
    parent_run_id: str | None = None
    flow_run_url: str | None = None
    shared: dict[str, Any] = Field(default_factory=dict, description="seed, threads, device, eval")

    def model_post_init(self, _: Any) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.store_root:
            self.store_root = str(self.home / "store")
        if not self.tracking_uri:
            self.tracking_uri = mlflow_runs.default_tracking_uri(self.home)

    def store(self) -> Store:
        return open_store(self.store_root, s3_endpoint_url=self.s3_endpoint_url)

    @staticmethod
    def output_key(stage: str, key: str) -> str:
        """Output locations derive from the cache key, never from the run name."""
        return f"artifacts/{stage}/{key[:24]}"

    def experiment_id(self) -> str:
        return mlflow_runs.experiment_id(self.tracking_uri, self.experiment, self.home / "mlartifacts")

    def stage_runtime(self) -> dict[str, Any]:
        return dict(self.shared)

    def stage_env(self) -> dict[str, str]:
        """What a stage process gets on top of the worker's environment. Hub access (HF_TOKEN,
        HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE) is the user's environment, passed through untouched:
        forcing offline mode here kept every hub source from downloading on a GPU worker."""
        threads = str(self.shared.get("threads", 2))
        return {"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "R1FLOW_HOME": str(self.home)}

    def tags(self) -> dict[str, str]:
        tags = {mlflow_runs.TAG_NAME: self.pipeline_name, "r1flow.git_commit": git_commit(),
                "r1flow.lock_digest": lock_digest()}
        if self.flow_run_url:
            tags["prefect.flow_run_url"] = self.flow_run_url
        return tags


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def lock_digest() -> str:
    lock = REPO / "constraints.txt"
    return hashlib.sha256(lock.read_bytes()).hexdigest()[:16] if lock.exists() else "none"
