"""The stage task: one unit of retry, caching and observability per stage (STYLE 8).

It launches the stage process (``r1flow.launcher``), turns its structured events into Prefect
logs, and returns the ``ArtifactRef`` the stage published. Caching (DESIGN "Tasks pass
references"): the key is computed before the task runs (``r1flow.cache.stage_key``: stage,
output-relevant config, input digests, library code version), the output location derives
from it, and a hit counts only if the output's manifest still verifies — a stale Prefect record
whose artifact vanished is dropped first, so the task re-runs. Retries: crashes only (a killed
process, a lost node, the network or store away); a config or input error, a full disk or an
exception of the stage's own code fails at once (``r1flow.launcher``).

A multi-process stage's collective timeout is derived from its estimate (``r1flow.estimate``)
and travels in the spec's runtime (``R1FLOW_COLLECTIVE_TIMEOUT_S`` set by hand still wins).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.context import get_run_context

from r1flow import mlflow_runs, multinode
from r1flow.checkpoint import checkpoint_prefix, newest_saved
from r1flow.config import PipelineConfig
from r1flow.estimate import stage_hours
from r1flow.launcher import (
    StageCrashed,
    StageFailed,
    StageInputError,
    check_exit,
    kill_group,
    run_process,
    stage_command,
    timeout_for,
    worst_error,
)
from r1flow.runtime import Runtime
from r1flow.stages.runner import DEFAULT_COLLECTIVE_TIMEOUT_S, StageSpec
from r1flow.store import ArtifactRef, StoreUnreachable
from tasks.progress import StageProgress


def key_from_params(context, parameters: dict[str, Any]) -> str:
    return parameters["key"]


def retry_crashes_only(task, task_run, state) -> bool:
    """A crashed stage (killed process, lost node, S3 away past its retries) is worth a retry,
    which resumes it; a refused config or input, a full disk, an exception the stage's code raised
    (``StageFailed``) or a bug in this code is not."""
    try:
        state.result()
    except (StageCrashed, StoreUnreachable, ConnectionError, TimeoutError):
        return True
    except Exception:
        return False
    return False


@task(name="stage", task_run_name="{stage}", cache_key_fn=key_from_params, persist_result=True,
      retries=1, retry_delay_seconds=2, retry_condition_fn=retry_crashes_only)
def run_stage(stage: str, key: str, config: dict[str, Any], inputs: dict[str, ArtifactRef],
              runtime: Runtime, fresh: bool = False, warm_start: str | None = None) -> ArtifactRef:
    """Run ``stage`` as its own process and return the artifact it published (``fresh``: even
    when an earlier attempt already published it — ``--refresh``; ``warm_start``: the checkpoint
    prefix of a crashed attempt under another config, continued with ``--allow-config-change``)."""
    logger = get_run_logger()
    store = runtime.store()
    output_key = runtime.output_key(stage, key)
    if not fresh and (ref := published(stage, store, output_key)):
        return ref
    run_id = (_reattach_mlflow_run(store, output_key, runtime)
              or _start_mlflow_run(stage, key, inputs, runtime, _warm_start_tags(store, warm_start)))
    spec = stage_spec(stage, config, inputs, runtime, output_key, run_id, warm_start)
    result: dict[str, Any] = {}
    errors: dict[str, str] = {}  # kind -> message of the error events its ranks emitted
    tail: deque[str] = deque(maxlen=40)  # the process's last plain lines, shown if it fails
    progress = StageProgress(stage)

    def on_line(line: str) -> None:
        tail.append(line)
        logger.debug("%s", line)

    def on_event(event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "result":
            result["ref"] = ArtifactRef.model_validate(event["ref"])
        elif kind == "error":
            errors[event.get("kind", "crash")] = str(event.get("message"))
            logger.error("stage %s: %s", stage, event.get("message"))
        elif kind == "log":
            logger.info("%s", event.get("message"))
        elif kind == "progress":
            progress.update(int(event["step"]), int(event["total"]), **event.get("info", {}))
        elif kind == "metrics":
            values = " ".join(f"{k}={v:.4g}" for k, v in sorted(event["values"].items()))
            logger.info("step %s %s", event.get("step"), values)

    shards = int(config.get("launch", {}).get("shards", 1))
    if shards > 1:
        run_shards(spec, shards, runtime)
    try:
        code = run_spec_process(spec, runtime, config.get("launch"), on_event, on_line)
    finally:
        progress.close()
    try:
        worst = worst_error(set(errors))
        check_exit(code, stage, errors.get(worst or ""), worst)
    except (StageInputError, StageFailed, StageCrashed):
        if tail:
            logger.error("stage %s output before it failed:\n%s", stage, "\n".join(tail))
        mlflow_runs.end_run(runtime.tracking_uri, run_id, "FAILED")
        raise
    if "ref" not in result:
        raise StageCrashed(f"stage {stage} exited cleanly but published no artifact")
    return result["ref"]


def run_spec_process(spec: StageSpec, runtime: Runtime, launch: dict[str, Any] | None,
                     on_event: Callable[[dict[str, Any]], None],
                     on_line: Callable[[str], None] = lambda line: None, on_start=lambda proc: None) -> int:
    """Write ``spec`` to a file in the state folder, run the stage process on it (under
    ``accelerate launch`` when ``launch`` asks for several processes), return its exit code."""
    text = spec.model_dump_json()
    if int((launch or {}).get("machines", 1)) > 1:  # machines 1..M-1 follow this one (r1flow.multinode)
        if not (job := multinode.job_id()):
            raise StageInputError(f"stage {spec.stage}: launch.machines > 1 needs {multinode.JOB_ENV} (the job all "
                                  "machines share; the multi-node Kubernetes template sets it)")
        multinode.publish_spec(runtime.store(), job, text)
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=runtime.home, delete=False) as f:
        f.write(text)
    try:
        return run_process(stage_command(Path(f.name), launch), env=runtime.stage_env(), on_event=on_event,
                           on_line=on_line, on_start=on_start)
    finally:
        os.unlink(f.name)


def stage_spec(stage: str, config: dict[str, Any], inputs: dict[str, ArtifactRef], runtime: Runtime,
               output_key: str, run_id: str | None = None, warm_start: str | None = None) -> StageSpec:
    launch = config.get("launch") or {}
    extra = {}
    if int(launch.get("processes", 1)) * int(launch.get("machines", 1)) > 1:  # only ranks wait in collectives
        extra["collective_timeout_s"] = stage_collective_timeout_s(_flow_config(), stage)
    return StageSpec(stage=stage, config=config, runtime={**runtime.stage_runtime(), **extra}, inputs=inputs,
                     output_key=output_key, store_root=runtime.store_root,
                     s3_endpoint_url=runtime.s3_endpoint_url, tracking_uri=runtime.tracking_uri,
                     mlflow_run_id=run_id, warm_start=warm_start, work_root=str(runtime.home / "work"))


def stage_collective_timeout_s(config: PipelineConfig | None, stage: str) -> float:
    """How long the ranks of ``stage`` may wait in a collective: its estimated hours on its GPUs
    with a margin (``timeout_for``: 2x + 1 h), so a stage estimated at 12 h is not cut at a fixed
    6 h and a short one's hang surfaces sooner; 6 h when the estimate cannot be made (a model of
    unknown size, a stage it does not cover)."""
    return timeout_for(stage_hours(config, stage) if config else None, DEFAULT_COLLECTIVE_TIMEOUT_S)


def _flow_config() -> PipelineConfig | None:
    """The pipeline config of the flow run this task runs in: every r1flow flow takes it as its
    ``config`` parameter. None outside a flow run, or when it does not resolve."""
    from prefect.runtime import flow_run

    from r1flow.config import resolve

    try:
        data = flow_run.parameters.get("config")
        return resolve(data) if isinstance(data, dict) else None
    except Exception:  # noqa: BLE001 - a timeout is no reason to fail a stage: the default applies
        return None


def run_shards(spec: StageSpec, n: int, runtime: Runtime) -> None:
    """Shards 0..n-1 of a generation stage, each its own process, all at once. They save chunks and
    publish nothing (no MLflow run of their own: the merging run that follows logs the stage); the
    first failure stops the others and fails the stage, and its retry reuses every chunk saved."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    logger = get_run_logger()  # the pool's threads do not see the run context
    logger.info("stage %s: %d shards", spec.stage, n)
    live, stopping = [], threading.Event()

    def started(proc) -> None:
        live.append(proc)
        if stopping.is_set():  # started after a sibling failed
            kill_group(proc)

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(run_one_shard, spec, i, n, runtime, logger, started) for i in range(n)]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            logger.error("stage %s: a shard failed; stopping the others", spec.stage)
            stopping.set()
            for proc in list(live):
                kill_group(proc)
            raise failed.exception()


def run_one_shard(spec: StageSpec, i: int, n: int, runtime: Runtime, logger, on_start=lambda proc: None) -> None:
    """Shard ``i`` of ``n`` as its own process: it saves its chunks (resuming from those saved)."""
    errors: dict[str, str] = {}
    shard = spec.model_copy(update={"shard": (i, n), "mlflow_run_id": None})

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "error":
            errors[event.get("kind", "crash")] = str(event.get("message"))
        elif event["event"] == "log":
            logger.info("shard %d/%d: %s", i + 1, n, event.get("message"))

    code = run_spec_process(shard, runtime, None, on_event, on_start=on_start)
    worst = worst_error(set(errors))
    check_exit(code, f"{spec.stage} shard {i + 1}/{n}", errors.get(worst or ""), worst)


@task(name="stage-shard", task_run_name="{stage}-shard-{index}", retries=1, retry_delay_seconds=2,
      retry_condition_fn=retry_crashes_only)
def run_stage_shard(stage: str, key: str, config: dict[str, Any], inputs: dict[str, ArtifactRef],
                    runtime: Runtime, index: int, count: int, fresh: bool = False) -> None:
    """Shard ``index`` (0-based) of ``count`` of a generation stage as this flow run's work
    (``launch.kind: deployment`` with ``launch.shards``: the pipeline launches one flow run per
    shard, then the merging one)."""
    output_key = runtime.output_key(stage, key)
    if not fresh and published(stage, runtime.store(), output_key):
        return  # merged already: nothing left to generate
    run_one_shard(stage_spec(stage, config, inputs, runtime, output_key), index, count, runtime,
                  get_run_logger())


def published(stage: str, store, output_key: str) -> ArtifactRef | None:
    """The stage's output when an earlier attempt (whose Prefect record is lost, or that ran on
    another machine) already published it."""
    if not store.verify(output_key):
        return None
    get_run_logger().info("stage %s: output already published at %s", stage, store.resolve(output_key))
    return store.ref(output_key)


def _reattach_mlflow_run(store, output_key: str, runtime: Runtime) -> str | None:
    """The MLflow run named by this stage run's newest checkpoint (or saved chunk), reopened: a
    resumed stage logs into the run it crashed in (its last value per metric and step is the
    uninterrupted one)."""
    key, meta = newest_saved(store, checkpoint_prefix(output_key)) or ("", {})
    run_id = meta.get("mlflow_run_id")
    if run_id and mlflow_runs.reopen_run(runtime.tracking_uri, run_id):
        get_run_logger().info("re-attaching to MLflow run %s (saved progress: %s)", run_id, store.resolve(key))
        return run_id
    return None


def _warm_start_tags(store, warm_start: str | None) -> dict[str, str]:
    """Links a warm-started stage run to the run of the attempt it continues."""
    key, meta = (newest_saved(store, warm_start) if warm_start else None) or ("", {})
    if not key:
        return {}
    return {"r1flow.resumed_from_run": meta.get("mlflow_run_id", ""),
            "r1flow.resumed_from_checkpoint": store.resolve(key)}


def _start_mlflow_run(stage: str, key: str, inputs: dict[str, ArtifactRef], runtime: Runtime,
                      extra_tags: dict[str, str]) -> str:
    tags = {mlflow_runs.TAG_STAGE: stage, "r1flow.cache_key": key, **runtime.tags(), **extra_tags,
            **{f"r1flow.input.{name}": ref.digest for name, ref in inputs.items()}}
    ctx = get_run_context()
    tags["prefect.task_run_id"] = str(ctx.task_run.id)
    return mlflow_runs.start_run(runtime.tracking_uri, runtime.experiment_id(), stage,
                                 parent=runtime.parent_run_id, tags=tags)
