"""MLflow layout: one parent run per pipeline run, one nested run per stage (DESIGN "MLflow layout").

Everything goes through ``MlflowClient`` with explicit run ids: MLflow's active-run stack is
thread-local, and Prefect runs tasks in worker threads, so fluent ``mlflow.start_run`` is avoided.
Only rank 0 of a stage logs. Params are the stage's resolved config, flattened; secrets are never
logged: fields with a secret's name (``SECRET_KEYS``) are dropped, secret-looking values masked
(``redact``).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from r1flow.tracking import NullTracker

EXPERIMENT = "r1flow"
TAG_NAME = "r1flow.pipeline"
TAG_STAGE = "r1flow.stage"
# exact field names (any case) whose values are secrets; not substrings: max_new_tokens is a setting
SECRET_KEYS = frozenset({
    "secret", "password", "passwd", "token", "api_key", "apikey", "access_key", "secret_key", "private_key",
    "credential", "credentials", "auth", "authorization", "access_token", "auth_token", "session_token",
    "hf_token", "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "webhook_url",
    "mlflow_tracking_password", "mlflow_tracking_token", "prefect_api_key"})
_SECRET_VALUES = [  # (pattern, replacement): AWS key ids, hub tokens, URL credentials (user:pass@, token@)
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "***"),
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), "***"),
    (re.compile(r"(?P<scheme>\b[a-zA-Z][\w+.-]*://)(?:[^/\s@:]*:[^\s@]*|[^/\s@:]+)@"), r"\g<scheme>***@"),
]


def default_tracking_uri(home: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str, artifact_root: Path | None) -> str:
    """Get or create the experiment; on sqlite its artifacts go under the state folder, not ./mlruns."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root and uri.startswith("sqlite") else None
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested dict -> {"a.b": "value"}; fields named as secrets dropped, secret values masked.

    >>> flatten({"max_new_tokens": 64, "token": "x", "url": "https://me:pw@host/p"})
    {'max_new_tokens': '64', 'url': 'https://***@host/p'}
    """
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if is_secret_key(str(k)):
                continue
            out.update(flatten(v, key))
    else:
        out[prefix] = redact(str(obj))[:6000]
    return out


_SECRET_PART = re.compile(r"(^|[_.-])(secret|password|passwd|token|api_?key|access_?key|private_?key|"
                          r"credentials?|auth|authorization|webhook_url)($|[_.-])", re.I)
_SETTINGS = re.compile(r"(^|_)(max|min)?_?(new_)?tokens?(_|$)|^num_tokens$|tokens_per", re.I)  # counts, not secrets


def is_secret_key(key: str) -> bool:
    """A field named as a secret: an exact known name, or a secret word as a part of it
    (``openai_api_key``, ``db_password``, ``github_token``) — but not a token count
    (``max_new_tokens``, ``prompt_tokens``).

    >>> [is_secret_key(k) for k in ("hf_token", "db_password", "openai_api_key", "max_new_tokens", "prompt_tokens")]
    [True, True, True, False, False]
    """
    low = key.lower()
    return low in SECRET_KEYS or (bool(_SECRET_PART.search(low)) and not _SETTINGS.search(low))


def redact(text: str) -> str:
    """``text`` with AWS access key ids, hub tokens (``hf_…``) and URL credentials masked.

    >>> redact("s3 at https://user:secret@minio:9000, key AKIAABCDEFGHIJKLMNOP")
    's3 at https://***@minio:9000, key ***'
    """
    for pattern, replacement in _SECRET_VALUES:
        text = pattern.sub(replacement, text)
    return text


def start_run(uri: str, exp_id: str, name: str, *, parent: str | None = None,
              tags: dict[str, str] | None = None) -> str:
    c = client(uri)
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    return c.create_run(exp_id, run_name=name, tags=all_tags).info.run_id


def log_params(uri: str, run_id: str, params: dict[str, str]) -> None:
    """Params are immutable in MLflow: on a run that has some already (a resumed stage), only new
    ones are logged, and a value that changed since (a setting outside the cache key, such as
    ``checkpoint_every``) is recorded as tag ``r1flow.param_changed.<name>``."""
    from mlflow.entities import Param, RunTag

    c = client(uri)
    params = {k[:250]: v for k, v in params.items()}
    logged = c.get_run(run_id).data.params
    items = [Param(k, v) for k, v in params.items() if k not in logged]
    changed = [RunTag(f"r1flow.param_changed.{k}"[:250], v) for k, v in params.items() if k in logged and logged[k] != v]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i:i + 100])
    for i in range(0, len(changed), 100):
        c.log_batch(run_id, tags=changed[i:i + 100])


def set_tags(uri: str, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    c = client(uri)
    c.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


def reopen_run(uri: str, run_id: str) -> bool:
    """Mark an ended run RUNNING again (a stage resuming from a checkpoint logs into the same run);
    False when the run no longer exists."""
    c = client(uri)
    try:
        run = c.get_run(run_id)
    except Exception:  # deleted, or another tracking server
        return False
    c.update_run(run_id, status="RUNNING")
    resumes = int(run.data.tags.get("r1flow.resumes", "0")) + 1
    c.set_tag(run_id, "r1flow.resumes", str(resumes))
    return True


def find_pipeline_runs(uri: str, name: str | None = None, experiment: str = EXPERIMENT) -> list:
    """Parent runs, newest first; optionally only those of pipeline ``name``."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    query = f"tags.`{TAG_NAME}` = '{name}'" if name else f"tags.`{TAG_NAME}` != ''"
    runs = c.search_runs([exp.experiment_id], filter_string=query, order_by=["start_time DESC"])
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # stage runs carry the tag too


def child_runs(uri: str, parent_run) -> list:
    c = client(uri)
    return list(c.search_runs([parent_run.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_run.info.run_id}'",
                              order_by=["start_time ASC"]))


class MLflowTracker(NullTracker):
    """Logs stepped metrics and tables to one MLflow run (use on rank 0 only).

    Metrics go through a ``MetricQueue`` (never blocks on the tracking server; spills to
    ``spill_dir`` when the server is away); tables and artifacts are sent at once. ``close`` at the
    end of the stage flushes and returns the queue's report."""

    def __init__(self, uri: str, run_id: str, spill_dir: str | Path | None = None, **queue: Any) -> None:
        from r1flow.metric_queue import MetricQueue

        self.client = client(uri)
        self.run_id = run_id
        self.queue = MetricQueue(self.client, run_id, spill_dir, **queue)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.queue.log_metrics({k: float(v) for k, v in metrics.items() if _finite(v)}, step)

    def flush(self, timeout_s: float = 5.0) -> list[dict]:
        """Wait (bounded) for queued metrics to be sent; returns those still pending."""
        return self.queue.flush(timeout_s)

    def requeue(self, records: list[dict]) -> None:
        self.queue.requeue(records)

    def close(self, timeout_s: float = 60.0, unsent_path: str | Path | None = None):
        """Flush for up to ``timeout_s``; returns a ``QueueReport`` (unsent metrics are in its file)."""
        return self.queue.close(timeout_s, unsent_path)

    def log_table(self, rows: list[dict[str, Any]], name: str) -> None:
        if rows:
            columns = {k: [str(r.get(k, "")) for r in rows] for k in rows[0]}
            self.client.log_table(self.run_id, data=columns, artifact_file=f"tables/{name}.json")

    def log_artifact(self, path: str, folder: str) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path=folder)

    def log_dataset(self, name: str, rows: list[dict[str, Any]], *, context: str, source: str) -> None:
        """Best effort: a tracking server away at this moment must not fail the work around it."""
        try:
            self.client.log_inputs(self.run_id, datasets=[dataset_input(name, rows, context=context, source=source)])
        except Exception as exc:  # noqa: BLE001 - MlflowException, connection errors
            print(f"r1flow: could not log dataset {name!r} to MLflow: {exc}", file=sys.stderr)


def dataset_input(name: str, rows: list[dict[str, Any]], *, context: str, source: str):
    """An MLflow dataset entry: digest = the first 32 hex digits of ``dataset_digest`` (the sha256 of
    the rows' canonical JSON lines, i.e. of the JSONL file r1flow writes; the whole sha256 and the
    row count are in its profile), schema = the columns. Datasets a stage writes are logged with
    context ``output`` (MLflow records dataset inputs only)."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    from r1flow.data.io import dataset_digest

    digest = dataset_digest(rows)
    columns = sorted({k for row in rows for k in row})
    schema = {"mlflow_colspec": [{"name": c, "type": "string"} for c in columns]}
    dataset = Dataset(name=name, digest=digest[:32], source_type="r1flow", source=json.dumps({"uri": source}),
                      schema=json.dumps(schema), profile=json.dumps({"num_rows": len(rows), "sha256": digest}))
    return DatasetInput(dataset=dataset, tags=[InputTag(key="mlflow.data.context", value=context)])


def system_metrics(uri: str, run_id: str):
    """MLflow's system metrics monitor (CPU, memory, disk, network; GPU utilization and memory
    where ``nvidia-ml-py`` finds a GPU) for a stage run, or None when switched off with MLflow's
    own ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false``; ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
    sets the interval (default 10 s). It stops by itself when the run ends or the server is away."""
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").lower() in ("false", "0"):
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=uri)
    monitor.start()
    return monitor


def stop_system_metrics(monitor, timeout_s: float = 5.0) -> None:
    """Stop the monitor without letting a tracking server that is away hold up the stage's end
    (its last flush retries for minutes; it runs in a daemon thread, given ``timeout_s``)."""
    import threading

    stopper = threading.Thread(target=monitor.finish, daemon=True, name="stop-system-metrics")
    stopper.start()
    stopper.join(timeout_s)


def _finite(v: Any) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f and f not in (float("inf"), float("-inf"))

