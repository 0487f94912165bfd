"""``r1flow compare NAME_A NAME_B …``: pipeline runs side by side, read back from MLflow.

The table has a row per (stage, metric) — each stage's key training metrics and every held-out
evaluation metric — and a column per run (its newest parent run of that name), read from the
stage run that produced the stage's artifact (for a cached stage, an earlier run's). The plots
overlay each RL stage's curves (reward, accuracy, held-out pass@1, KL, response length) across
the runs. Table (markdown and CSV) and plots are written to a folder and logged to a new MLflow
run tagged ``r1flow.compare`` in the runs' experiment.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from r1flow import mlflow_runs
from r1flow.config import RL_STAGES, STAGES
from r1flow.plots import COMPARE_PANELS, plot_overlay

TRAINING = ("loss", "reward/mean", "reward/accuracy/mean", "kl_k3", "clip_fraction", "response_length/mean",
            "kept", "accept_rate", "accuracy")
PIPELINE_FLOWS = ("r1-pipeline", "r1-zero")


def stage_runs(tracking_uri: str, name: str, experiment: str = mlflow_runs.EXPERIMENT) -> tuple[Any, dict[str, str]]:
    """The newest pipeline (or R1-Zero) run of ``name`` — not a one-stage run under that name — and,
    per stage, the MLflow run that produced its artifact."""
    runs = [r for r in mlflow_runs.find_pipeline_runs(tracking_uri, name, experiment)
            if r.data.tags.get("r1flow.flow") in PIPELINE_FLOWS]
    if not runs:
        raise LookupError(f"no pipeline run named {name!r} in experiment {experiment!r}")
    tags = runs[0].data.tags
    return runs[0], {s: tags[f"r1flow.stage.{s}.run"] for s in STAGES if tags.get(f"r1flow.stage.{s}.run")}


def _shown(metric: str) -> bool:
    return metric in TRAINING or (metric.startswith("eval/") and metric.count("/") == 2)


def comparison_rows(tracking_uri: str, runs: dict[str, dict[str, str]]) -> list[dict]:
    """``[{"stage", "metric", NAME_A: value, NAME_B: value, …}]`` in pipeline order, from each
    name's stage runs (``stage_runs``)."""
    client = mlflow_runs.client(tracking_uri)
    values: dict[tuple[str, str], dict[str, float]] = {}
    for name, stages in runs.items():
        for stage, run_id in stages.items():
            for metric, value in client.get_run(run_id).data.metrics.items():
                if _shown(metric):
                    values.setdefault((stage, metric), {})[name] = value
    order = {s: i for i, s in enumerate(STAGES)}
    return [{"stage": stage, "metric": metric, **values[(stage, metric)]}
            for stage, metric in sorted(values, key=lambda k: (order[k[0]], not k[1].startswith("eval/"), k[1]))]


def render(rows: list[dict], names: list[str], fmt: str = "text") -> str:
    """The table as ``text`` (aligned columns), ``markdown`` or ``csv``."""
    columns = ["stage", "metric", *names]
    cells = [[str(r["stage"]), str(r["metric"]), *(f"{r[n]:.4g}" if n in r else "" for n in names)] for r in rows]
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerows([columns, *cells])
        return buf.getvalue()
    if fmt == "markdown":
        return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
                          *("| " + " | ".join(c) + " |" for c in cells)])
    if fmt != "text":
        raise ValueError(f"unknown format {fmt!r}; use text, markdown or csv")
    widths = [max(len(x) for x in col) for col in zip(columns, *cells)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [columns, *cells])


def histories(tracking_uri: str, run_id: str, keys: tuple[str, ...]) -> list[tuple[int, dict[str, float]]]:
    """A run's stepped metrics, as the plots read them: ``[(step, {key: value})]`` by step."""
    client = mlflow_runs.client(tracking_uri)
    by_step: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            by_step.setdefault(m.step, {})[key] = m.value
    return sorted(by_step.items())


def compare(tracking_uri: str, names: list[str], out_dir: str | Path,
            experiment: str = mlflow_runs.EXPERIMENT) -> tuple[list[dict], list[Path], str]:
    """Write ``compare.md``, ``compare.csv`` and one PNG per RL stage into ``out_dir``; log them to
    a new MLflow run. Returns the rows, the files and that run's id."""
    if len(set(names)) < 2:
        raise ValueError(f"compare needs at least two different run names, got {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = {name: stage_runs(tracking_uri, name, experiment) for name in names}
    rows = comparison_rows(tracking_uri, {name: stages for name, (_, stages) in runs.items()})
    files = [out / "compare.md", out / "compare.csv"]
    files[0].write_text(render(rows, names, "markdown") + "\n")
    files[1].write_text(render(rows, names, "csv"))
    keys = tuple(key for _, key in COMPARE_PANELS)
    for stage in RL_STAGES:
        curves = {name: histories(tracking_uri, stages[stage], keys) for name, (_, stages) in runs.items()
                  if stage in stages}
        png = plot_overlay(curves, out / f"compare_{stage}.png", f"{stage}: {' vs '.join(curves)}")
        if png is not None:
            files.append(png)
    first_parent = next(iter(runs.values()))[0]
    run_id = mlflow_runs.start_run(tracking_uri, first_parent.info.experiment_id, "compare " + " vs ".join(names),
                                   tags={"r1flow.compare": ",".join(names),
                                         **{f"r1flow.compare.{n}": p.info.run_id for n, (p, _) in runs.items()}})
    client, status = mlflow_runs.client(tracking_uri), "FAILED"
    try:
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path="compare")
        status = "FINISHED"
    finally:
        mlflow_runs.end_run(tracking_uri, run_id, status)
    return rows, files, run_id
