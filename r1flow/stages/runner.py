"""The stage process: validate, resolve inputs, do the work, publish the artifact, report.

``python -m r1flow.stages SPEC.json`` runs one stage. The spec (written by the orchestrating task)
names the stage, its resolved config, its input refs, the store key of its output and the MLflow
run to log into. Order matters for "bad input fails before expensive work, leaving nothing":
config and inputs are validated first (exit code 2 on error), the work happens in a private
staging folder, and the artifact becomes visible only when the store writes its manifest last.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from r1flow import mlflow_runs
from r1flow.checkpoint import Checkpointer, checkpoint_prefix
from r1flow.chunks import ChunkLog
from r1flow.diskspace import DiskFull, free_bytes, is_disk_full
from r1flow.events import emit
from r1flow.launcher import EXIT_DISK_FULL, EXIT_INPUT_ERROR
from r1flow.store import ArtifactRef, Store, StoreError, StoreUnreachable, open_store
from r1flow.tracking import EventTracker, NullTracker, Tracker

METRIC_FLUSH_S = 60.0  # how long a finished stage waits for queued metrics to reach MLflow


class UserError(ValueError):
    """A config or input error: reported with exit code 2, never retried."""


class StageSpec(BaseModel):
    """Everything a stage process needs; written as JSON by the orchestrator."""

    model_config = ConfigDict(extra="forbid")
    stage: str
    config: dict[str, Any] = Field(description="the stage's resolved config")
    runtime: dict[str, Any] = Field(default_factory=dict, description="seed, threads, device, eval")
    inputs: dict[str, ArtifactRef] = Field(default_factory=dict)
    output_key: str = Field(description="store key the artifact is published under")
    store_root: str
    s3_endpoint_url: str | None = None
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    warm_start: str | None = Field(None, description="checkpoint prefix of a crashed attempt under "
                                   "another config, continued with --allow-config-change")
    work_root: str | None = Field(None, description="where the staging folder goes")
    shard: tuple[int, int] | None = Field(None, description="(i, N): a generation stage's shard i of N — "
                                          "it generates and saves its chunks and publishes nothing")


@dataclass
class StageContext:
    """What a stage's ``run`` receives."""

    spec: StageSpec
    config: Any
    inputs: dict[str, Path]
    workdir: Path
    store: Store
    tracker: Tracker = field(default_factory=NullTracker)
    rank: int = 0
    sources: dict[int, dict[str, Any]] = field(default_factory=dict)  # id(model) -> where it was loaded from
    engines: dict[int, Any] = field(default_factory=dict)  # id(model) -> its evaluation engine, reused (vLLM)

    @property
    def runtime(self) -> dict[str, Any]:
        return self.spec.runtime

    def log(self, message: str, **data: Any) -> None:
        if self.rank == 0:
            emit("log", message=message, **data)

    def set_tags(self, **tags: Any) -> None:
        if self.rank == 0 and self.spec.mlflow_run_id and self.spec.tracking_uri:
            mlflow_runs.set_tags(self.spec.tracking_uri, self.spec.mlflow_run_id, tags)

    def fault_point(self, step: int) -> None:
        """Fault injection for crash tests: ``R1FLOW_FAULT_KILL=<stage>:<step>:<marker file>``
        (comma-separated for several) SIGKILLs this process after ``step``, once per marker file
        (the file records that it fired)."""
        for fault in filter(None, os.environ.get("R1FLOW_FAULT_KILL", "").split(",")):
            if fault.count(":") < 2:
                continue
            stage, at, marker = fault.split(":", 2)
            if stage == self.spec.stage and at == str(step) and not Path(marker).exists():
                Path(marker).write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

    def checkpointer(self) -> Checkpointer | None:
        """Checkpoints of this stage run (``checkpoint_prefix``), each naming its MLflow run; None
        when the stage's ``checkpoint_every`` is 0."""
        every = getattr(self.config, "checkpoint_every", 0)
        if not every:
            return None
        return Checkpointer(self.store, checkpoint_prefix(self.spec.output_key), every=every,
                            keep=self.config.keep_checkpoints, log=self.log,
                            meta={"mlflow_run_id": self.spec.mlflow_run_id or ""},
                            warm_start=self.spec.warm_start, tracker=self.tracker)

    def chunk_log(self, part: str = "") -> ChunkLog:
        """Saved chunks of a generation stage (``r1flow.chunks``), beside its checkpoints; ``part``
        keeps apart the chunk series of one stage (one per benchmark of an evaluation)."""
        # no warm start here: a chunk's samples depend on the config that made them
        prefix = checkpoint_prefix(self.spec.output_key) + (f"/{part}" if part else "")
        return ChunkLog(self.store, prefix, log=self.log,
                        meta={"mlflow_run_id": self.spec.mlflow_run_id or ""})

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
        return path


def _resolve_inputs(store: Store, spec: StageSpec, cache_dir: Path) -> dict[str, Path]:
    """Local paths of every input; remote ones are downloaded and verified (sha256)."""
    paths = {}
    for name, ref in spec.inputs.items():
        local = store.local_path(ref.uri)
        if local is None:
            local = store.get_dir(ref.uri, cache_dir / ref.digest[:16])
        elif not store.verify(ref.uri):
            raise UserError(f"input {name!r} at {ref.uri} is missing or incomplete")
        if store.manifest(ref.uri).digest != ref.digest:
            raise UserError(f"input {name!r} at {ref.uri} changed since it was produced")
        paths[name] = Path(local)
    return paths


@contextmanager
def _refusals() -> Iterator[None]:
    """A bad config or input becomes ``UserError`` (exit 2, not retried); a full disk or an S3
    store that is away is not the input's fault and passes through."""
    try:
        yield
    except (DiskFull, StoreUnreachable):
        raise
    except (ValidationError, StoreError, FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc


def join_process_group(runtime: dict[str, Any]) -> int:
    """Under ``accelerate launch`` (WORLD_SIZE > 1): join the process group — gloo on CPU, NCCL on
    GPUs — so the trainers' gradient all-reduces span the ranks; returns this process's rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return int(os.environ.get("RANK", "0"))
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    cpu = runtime.get("device", "cpu") == "cpu" or not torch.cuda.is_available()
    # the other ranks wait in a collective while rank 0 alone evaluates, samples or writes a checkpoint:
    # far longer than NCCL's 10-minute default allows on real models
    timeout = timedelta(seconds=float(os.environ.get("R1FLOW_COLLECTIVE_TIMEOUT_S", 6 * 3600)))
    return PartialState(cpu=cpu, timeout=timeout).process_index


def run_spec(spec: StageSpec, rank: int = 0) -> ArtifactRef | None:
    """Run one stage in this process; returns the published ref (rank 0) or None."""
    from r1flow.stages import load_stage

    stage = load_stage(spec.stage)
    tracking = spec.tracking_uri and spec.mlflow_run_id and rank == 0
    with _refusals():
        config = stage.Config.model_validate(spec.config)
        store = open_store(spec.store_root, s3_endpoint_url=spec.s3_endpoint_url)
        store.check()
        work_root = Path(spec.work_root or tempfile.gettempdir())
        work_root.mkdir(parents=True, exist_ok=True)
        # ranks of one stage download remote inputs into folders of their own: no race between them
        inputs = _resolve_inputs(store, spec, work_root / ("inputs" if rank == 0 else f"inputs-rank{rank}"))
    workdir = Path(tempfile.mkdtemp(prefix=f"{spec.stage}-", dir=work_root))
    spill = work_root / "metric-spill"  # metrics waiting out a tracking-server outage (r1flow.metric_queue)
    spill.mkdir(exist_ok=True)
    inner = mlflow_runs.MLflowTracker(spec.tracking_uri, spec.mlflow_run_id, spill_dir=spill) if tracking else None
    tracker: Tracker = EventTracker(inner) if rank == 0 else NullTracker()
    if tracking:
        mlflow_runs.log_params(spec.tracking_uri, spec.mlflow_run_id,
                               mlflow_runs.flatten(config.model_dump(mode="json")))
    ctx = StageContext(spec, config, inputs, workdir, store, tracker, rank)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        ctx.set_tags(**{"r1flow.world_size": os.environ["WORLD_SIZE"]})
    monitor = mlflow_runs.system_metrics(spec.tracking_uri, spec.mlflow_run_id) if tracking else None
    try:
        with _refusals():
            stage.check(ctx)  # cheap input checks before the expensive part
        stage.run(ctx)  # mixed precision is per forward (r1flow.precision), never one context here
        if rank != 0 or spec.shard:
            return None
        if inner is not None:
            _deliver_metrics(inner, ctx, _unsent_path(work_root, spec))
        meta = {"stage": spec.stage, "mlflow_run_id": spec.mlflow_run_id or ""}
        ref = store.put_dir(workdir, spec.output_key, meta=meta)
        if tracking:
            mlflow_runs.set_tags(spec.tracking_uri, spec.mlflow_run_id,
                                 {"r1flow.artifact_uri": ref.uri, "r1flow.artifact_digest": ref.digest})
        return ref
    finally:
        if monitor is not None:
            mlflow_runs.stop_system_metrics(monitor)
        if inner is not None:  # a failed stage: flush briefly (a no-op after _deliver_metrics)
            inner.close(METRIC_FLUSH_S / 2, unsent_path=_unsent_path(work_root, spec))
        shutil.rmtree(workdir, ignore_errors=True)


def _unsent_path(work_root: Path, spec: StageSpec) -> Path:
    """Where metrics MLflow never got are kept: on the worker, not in the artifact (whose digest
    keys everything downstream)."""
    return work_root / "unsent-metrics" / f"{spec.mlflow_run_id}.jsonl"


def _deliver_metrics(tracker: mlflow_runs.MLflowTracker, ctx: StageContext, unsent: Path) -> None:
    """Wait (bounded) for queued metrics to reach MLflow; whatever could not be sent is kept in
    ``unsent`` and counted in the log and on the run — never lost silently."""
    report = tracker.close(METRIC_FLUSH_S, unsent_path=unsent)
    ctx.log(f"metrics to MLflow: {report.sent} of {report.logged} sent, {report.spilled} via disk spill, "
            f"{report.unsent} unsent" + (f" (kept in {report.unsent_path})" if report.unsent else "")
            + f", {report.lost} dropped or rejected"
            + (f"; last error: {report.last_error}" if report.last_error and (report.unsent or report.lost) else ""))
    try:
        ctx.set_tags(**{"r1flow.metrics_unsent": report.unsent, "r1flow.metrics_lost": report.lost})
    except Exception as exc:  # the server is still away: the log line above and the file say it
        ctx.log(f"warning: could not tag the metric delivery report: {exc}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m r1flow.stages SPEC.json", file=sys.stderr)
        return EXIT_INPUT_ERROR
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        spec = StageSpec.model_validate_json(Path(argv[0]).read_text())
    except (OSError, ValidationError) as exc:
        emit("error", kind="input", message=f"bad stage spec {argv[0]}: {exc}")
        return EXIT_INPUT_ERROR
    if spec.shard and (gpu := shard_gpu(os.environ.get("CUDA_VISIBLE_DEVICES"), _gpu_count(), spec.shard[0])):
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before anything touches CUDA: vLLM engines obey it too
    rank = join_process_group(spec.runtime)
    status, code = "FAILED", 1
    try:
        ref = run_spec(spec, rank)
        if ref is not None:
            emit("result", ref=ref.model_dump())
        status, code = "FINISHED", 0
    except UserError as exc:
        emit("error", kind="input", message=str(exc))
        code = EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        status, code = "KILLED", 130
    except Exception as exc:
        if isinstance(exc, DiskFull) or is_disk_full(exc):  # not retried: the same disk is still full
            emit("error", kind="disk", message=f"{exc} (work folder {spec.work_root}: "
                                               f"{free_bytes(spec.work_root or '.') >> 20} MB free)")
            code = EXIT_DISK_FULL
        else:  # a crash: the orchestrator retries it
            traceback.print_exc(file=sys.stdout)
            emit("error", kind="crash", message=f"{type(exc).__name__}: {exc}")
    if rank == 0 and spec.tracking_uri and spec.mlflow_run_id:
        mlflow_runs.end_run(spec.tracking_uri, spec.mlflow_run_id, status)
    return code


def shard_gpu(visible: str | None, count: int, shard: int) -> str | None:
    """The one GPU shard ``shard`` of a generation stage uses when the shards run side by side on
    one machine: the (shard mod n)-th of the n visible GPUs; None with fewer than two.

    >>> shard_gpu(None, 8, 9), shard_gpu("4,6", 8, 3), shard_gpu(None, 1, 3)
    ('1', '6', None)
    """
    ids = [i for i in visible.split(",") if i] if visible else [str(i) for i in range(count)]
    return ids[shard % len(ids)] if len(ids) > 1 else None


def _gpu_count() -> int:
    """NVIDIA GPUs on this machine, without initializing CUDA (which would freeze its device list)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def _raise_interrupt(signum, frame):  # SIGTERM from a cancelled run: end the MLflow run as KILLED
    raise KeyboardInterrupt
