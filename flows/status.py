"""``r1flow status`` and ``r1flow report``: read a pipeline run back from MLflow.

The parent run carries one tag group per stage (``r1flow.stage.<stage>.state|uri|run|seconds``,
written by ``flows.run.PipelineRun``); the report adds each stage's final metrics and its
held-out evaluation from the stage's own MLflow run (the run that produced the artifact, which
for a cached stage is an earlier pipeline run's).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from r1flow import mlflow_runs
from r1flow.config import EVALUATION, STAGES, PipelineConfig
from r1flow.runtime import Runtime

KEY_METRICS = ("loss", "reward/mean", "kl_k3", "clip_fraction", "response_length/mean", "kept", "accuracy",
               "eval/arith_heldout/pass_at_1", "eval/arith_heldout/lenient_pass_at_1",
               "eval/arith_heldout/cons_at_4", "eval/arith_heldout/format_rate",
               "eval_gain/arith_heldout/pass_at_1", "eval_gain/arith_heldout/pass_at_1_stderr")


def _latest(name: str | None, experiment: str = mlflow_runs.EXPERIMENT):
    uri = Runtime().tracking_uri
    runs = mlflow_runs.find_pipeline_runs(uri, name, experiment)
    if not runs:
        where = f" in MLflow experiment {experiment!r} (another one: --experiment)"
        raise LookupError((f"no pipeline run named {name!r}" if name else "no pipeline runs yet") + where)
    return uri, runs[0]


def stage_rows(name: str | None,
               experiment: str = mlflow_runs.EXPERIMENT) -> tuple[Any, list[dict[str, str]]]:
    _, run = _latest(name, experiment)
    tags = run.data.tags
    rows = []
    for stage in STAGES + (EVALUATION,):
        prefix = f"r1flow.stage.{stage}."
        if prefix + "state" in tags:
            rows.append({"stage": stage, "state": tags[prefix + "state"], "uri": tags.get(prefix + "uri", ""),
                         "mlflow_run": tags.get(prefix + "run", ""), "seconds": tags.get(prefix + "seconds", ""),
                         "inputs": tags.get(prefix + "inputs", "{}")})
    return run, rows


def status_table(name: str | None, experiment: str = mlflow_runs.EXPERIMENT) -> str:
    try:
        run, rows = stage_rows(name, experiment)
    except LookupError as exc:
        return str(exc)
    head = (f"pipeline {run.data.tags.get(mlflow_runs.TAG_NAME)}  MLflow run {run.info.run_id}  "
            f"({run.info.status})")
    lines = [head, f"{'stage':<20} {'state':<8} {'mlflow run':<34} artifact"]
    lines += [f"{r['stage']:<20} {r['state']:<8} {r['mlflow_run']:<34} {r['uri']}" for r in rows]
    return "\n".join(lines)


def report_rows(name: str | None, experiment: str = mlflow_runs.EXPERIMENT) -> list[dict[str, str]]:
    uri = Runtime().tracking_uri
    _, rows = stage_rows(name, experiment)
    client = mlflow_runs.client(uri)
    out = []
    for row in rows:
        metrics = client.get_run(row["mlflow_run"]).data.metrics if row["mlflow_run"] else {}
        shown = {k: f"{metrics[k]:.3f}" for k in KEY_METRICS if k in metrics}
        out.append({"stage": row["stage"], "state": row["state"], "seconds": row["seconds"], **shown})
    return out


def report_table(name: str | None, fmt: str = "markdown", experiment: str = mlflow_runs.EXPERIMENT) -> str:
    try:
        rows = report_rows(name, experiment)
    except LookupError as exc:
        return str(exc)
    columns = ["stage", "state", "seconds"] + [k for k in KEY_METRICS if any(k in r for r in rows)]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r.get(c, "") for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def inputs_of(stage: str, name: str, config: PipelineConfig) -> dict[str, str]:
    """The artifact URIs a stage consumed in the newest run ``name`` that ran it (for
    ``r1flow stage``; a single-stage run under the same name records only its own stage)."""
    config.section(stage)
    for run in mlflow_runs.find_pipeline_runs(Runtime().tracking_uri, name, config.tracking.experiment):
        inputs = run.data.tags.get(f"r1flow.stage.{stage}.inputs")
        if inputs is not None:
            return json.loads(inputs)
    raise LookupError(f"stage {stage} did not run in pipeline {name!r}; pass --input NAME=URI")


def pipeline_record(name: str, store_root: str | None = None, s3_endpoint_url: str | None = None,
                    experiment: str = mlflow_runs.EXPERIMENT):
    """The store's record of run ``name`` (``r1flow.lineage``), for ``r1flow resume``. The store is
    the one given, else the one the newest MLflow parent run of ``name`` (in ``experiment``)
    names, else the default."""
    from r1flow import lineage
    from r1flow.store import StoreError

    if store_root is None:
        runs = mlflow_runs.find_pipeline_runs(Runtime().tracking_uri, name, experiment)
        params = runs[0].data.params if runs else {}
        store_root = params.get("store.root", "")
        endpoint = params.get("store.s3_endpoint_url", "None")
        s3_endpoint_url = s3_endpoint_url or (None if endpoint == "None" else endpoint)
    runtime = Runtime(store_root=store_root, s3_endpoint_url=s3_endpoint_url)
    try:
        record = lineage.read_pipeline(runtime.store(), lineage.check_name(name))
    except (StoreError, ValueError) as exc:
        raise LookupError(f"cannot read the record of run {name!r} in {runtime.store_root}: {exc}") from None
    if record is None:
        raise LookupError(f"no record of a pipeline run named {name!r} in {runtime.store_root} "
                          "(a one-stage run is re-run with `r1flow stage`, not resumed)")
    return record


def explain_stage(name: str, stage: str, experiment: str = mlflow_runs.EXPERIMENT) -> str:
    """What the cache key of ``stage`` in run ``name`` was made of (its store record): the config
    digest, the shared runtime settings, each input's digest and the code version — the stage's own
    modules, assets and lock file (``r1flow.cache.code_version``) — and whether that code changed."""
    from r1flow import lineage
    from r1flow.cache import PACKAGE, code_version, stage_modules
    from r1flow.store import digest_json

    record = pipeline_record(name, experiment=experiment)  # finds the run's store
    runs = mlflow_runs.find_pipeline_runs(Runtime().tracking_uri, name, experiment)
    params = runs[0].data.params if runs else {}
    endpoint = params.get("store.s3_endpoint_url", "None")
    store = Runtime(store_root=params.get("store.root", ""),
                    s3_endpoint_url=None if endpoint == "None" else endpoint).store()
    attempt = lineage.read_attempt(store, record.name, stage)
    if attempt is None:
        raise LookupError(f"stage {stage} has no record in run {name!r}")
    now = code_version(stage)
    modules = [str(p.relative_to(PACKAGE.parent)) for p in stage_modules(stage)]
    lines = [f"stage {stage} of run {name!r} ({attempt.status}): cache key {attempt.key}",
             f"  config   {digest_json(attempt.config)[:16]}  ({len(attempt.config)} fields)",
             f"  runtime  {digest_json(attempt.runtime)[:16]}  ({', '.join(sorted(attempt.runtime))})"]
    lines += [f"  input    {k} = {v[:16]}" for k, v in sorted(attempt.inputs.items())]
    same = "unchanged" if attempt.code == now else "CHANGED"
    lines.append(f"  code     {attempt.code[:16]}, now {now[:16]} ({same}): {len(modules)} modules, the package's "
                 "assets, constraints.txt")
    lines += [f"             {m}" for m in modules]
    return "\n".join(lines)
