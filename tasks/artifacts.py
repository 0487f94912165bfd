"""What a run shows in the Prefect UI: a markdown summary per stage (key metrics, the MLflow run
link, the artifact URI) and a table of evaluation results (progress: ``tasks.progress``).

The MLflow side links back: every run carries the Prefect flow run's URL as a tag
(``prefect.flow_run_url``), and each summary here carries the MLflow run's URL.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from r1flow import mlflow_runs
from r1flow.store import ArtifactRef

SUMMARY_METRICS = ("reward/mean", "kl_k3", "response_length/mean", "loss", "kept", "accept_rate", "accuracy")
EVAL = re.compile(r"^eval/(?P<bench>[^/]+)/(?P<metric>pass_at_1|lenient_pass_at_1|cons_at_\d+|format_rate)$")


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A link a browser can open for an http(s) tracking server; the run id otherwise. Credentials
    in the URI (``user:password@``) never reach the artifact."""
    parts = urlsplit(tracking_uri)
    if parts.password or parts.username:
        tracking_uri = urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"mlflow run {run_id} ({tracking_uri})"


def quietly(what: str, call, *args, **kwargs) -> Any:
    """Prefect artifacts are for people watching: a failing API call is logged, never allowed to
    stop a stage or a pipeline."""
    try:
        return call(*args, **kwargs)
    except Exception as exc:  # the Prefect API is away or refuses the artifact
        logging.getLogger("r1flow.artifacts").warning("could not write the %s artifact: %s", what, exc)
        return None


def stage_summary(pipeline: str, stage: str, state: str, ref: ArtifactRef, tracking_uri: str,
                  experiment_id: str) -> None:
    """A markdown artifact: what the stage did (done / cached / its MLflow run) and its key metrics."""
    run_id = ref.meta.get("mlflow_run_id", "")
    metrics = _metrics(tracking_uri, run_id)
    lines = [f"# {stage} ({state})", "",
             f"- MLflow run: {mlflow_run_url(tracking_uri, experiment_id, run_id) if run_id else '(none)'}",
             f"- artifact: `{ref.uri}` (sha256 of its files `{ref.digest[:16]}…`)"]
    shown = [(k, metrics[k]) for k in sorted(metrics) if k in SUMMARY_METRICS or EVAL.match(k)]
    if shown:
        lines += ["", "| metric | value |", "|---|---|", *[f"| {k} | {v:.4g} |" for k, v in shown]]
    quietly("summary", create_markdown_artifact, markdown="\n".join(lines), key=artifact_key(pipeline, stage),
            description=f"{pipeline}: stage {stage}")


def evaluation_table(pipeline: str, refs: dict[str, ArtifactRef], tracking_uri: str) -> list[dict[str, Any]]:
    """A table artifact: one row per (stage, benchmark) with the held-out evaluation metrics."""
    rows: list[dict[str, Any]] = []
    for stage, ref in refs.items():
        by_bench: dict[str, dict[str, Any]] = {}
        for key, value in _metrics(tracking_uri, ref.meta.get("mlflow_run_id", "")).items():
            if match := EVAL.match(key):
                row = by_bench.setdefault(match["bench"], {"stage": stage, "benchmark": match["bench"]})
                row[match["metric"]] = round(value, 4)
        rows += by_bench.values()
    if rows:
        quietly("evaluation table", create_table_artifact, table=rows, key=artifact_key(pipeline, "evaluation"),
                description=f"{pipeline}: held-out evaluation of every model it produced")
    return rows


def _metrics(tracking_uri: str, run_id: str) -> dict[str, float]:
    if not run_id:
        return {}
    try:
        return dict(mlflow_runs.client(tracking_uri).get_run(run_id).data.metrics)
    except Exception:  # the tracking server is away: the summary goes without numbers
        return {}
