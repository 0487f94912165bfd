"""The stage process: validate, resolve inputs, do the work, publish the artifact, report.

``python -m r1flow.stages SPEC.json`` runs one stage. The spec (written by the orchestrating task)
names the stage, its resolved config, its input refs, the store key of its output and the MLflow
run to log into. Order matters for "bad input fails before expensive work, leaving nothing":
config and inputs are validated first (exit code 2 on error), the work happens in a private
staging folder, and the artifact becomes visible only when the store writes its manifest last.

A GPU worker runs many stages, so a stage leaves nothing on its disk: its downloaded inputs and
its staging folder live in one private folder under the work root (``_scratch``), removed however
the stage ends; only metrics still waiting for MLflow stay. An exception of the stage's own code
exits 4 and is not retried; one that says the network, the store or a peer rank was away
(``is_transient``) is a crash, retried.
"""

from __future__ import annotations

import fcntl
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
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from r1flow import mlflow_runs
from r1flow.checkpoint import Checkpointer, checkpoint_prefix
from r1flow.chunks import ChunkLog
from r1flow.diskspace import DiskFull, free_bytes, is_disk_full
from r1flow.events import emit
from r1flow.launcher import EXIT_DISK_FULL, EXIT_INPUT_ERROR, EXIT_STAGE_ERROR
from r1flow.store import ArtifactRef, Store, StoreError, StoreUnreachable, open_store
from r1flow.tracking import EventTracker, NullTracker, Tracker

METRIC_FLUSH_S = 60.0  # how long a finished stage waits for queued metrics to reach MLflow
DEFAULT_COLLECTIVE_TIMEOUT_S = 6 * 3600.0  # without an estimate of the stage (tasks.stage derives one)
OWNER = ".r1flow-owner"  # in a stage's scratch folder: locked by its process for as long as it lives


class UserError(ValueError):
    """A config or input error: reported with exit code 2, never retried."""


class StageSpec(BaseModel):
    """Everything a stage process needs; written as JSON by the orchestrator."""

    model_config = ConfigDict(extra="forbid")
    stage: str
    config: dict[str, Any] = Field(description="the stage's resolved config")
    runtime: dict[str, Any] = Field(default_factory=dict, description="seed, threads, device, eval, "
                                    "collective_timeout_s")
    inputs: dict[str, ArtifactRef] = Field(default_factory=dict)
    output_key: str = Field(description="store key the artifact is published under")
    store_root: str
    s3_endpoint_url: str | None = None
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    warm_start: str | None = Field(None, description="checkpoint prefix of a crashed attempt under "
                                   "another config, continued with --allow-config-change")
    work_root: str | None = Field(None, description="where the stage's scratch folder goes")
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


@contextmanager
def _scratch(work_root: Path, stage: str) -> Iterator[Path]:
    """A folder of this process alone (ranks and side-by-side shards each get their own) for its
    downloaded inputs and staging folder, removed however the stage ends. A SIGKILLed stage (the
    OOM killer) cannot clean up: the next stage process on this work root sweeps its folder.

    No cache of inputs across stages: a stage's big input is the model the stage before it wrote,
    read once (a real preset's base artifact, read by several, is a source.json: its weights come
    from the hub cache); only a retry would reuse it, and downloading even a 15 GB model takes
    minutes against a stage's hours — not worth a cache shared by concurrent processes, with its
    locking and eviction."""
    _sweep(work_root)
    folder = Path(tempfile.mkdtemp(prefix=f"{stage}-", dir=work_root))
    fd, lock = tempfile.mkstemp(dir=folder)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(lock, folder / OWNER)  # a sweeper sees the owner file only once it is locked
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def _sweep(work_root: Path) -> None:
    """Remove the scratch folders whose process died without removing them: the kernel drops a
    dead process's lock, so an owner file that can be locked has no live owner."""
    for owner in work_root.glob(f"*/{OWNER}"):
        try:
            fd = os.open(owner, os.O_RDONLY)
        except OSError:  # swept by another stage meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(owner.parent, ignore_errors=True)
        except OSError:  # its stage is alive
            pass
        finally:
            os.close(fd)


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
    return PartialState(cpu=cpu, timeout=timedelta(seconds=collective_timeout_s(runtime))).process_index


def collective_timeout_s(runtime: dict[str, Any]) -> float:
    """How long a rank waits in a collective. The other ranks wait there while rank 0 alone
    evaluates, samples or writes a checkpoint: far longer than NCCL's 10-minute default on real
    models, and on a long stage longer than any fixed value. ``R1FLOW_COLLECTIVE_TIMEOUT_S`` when
    set by hand, else what the orchestrator derived from the stage's estimate, else 6 h."""
    explicit = os.environ.get("R1FLOW_COLLECTIVE_TIMEOUT_S")
    return float(explicit or runtime.get("collective_timeout_s") or DEFAULT_COLLECTIVE_TIMEOUT_S)


def run_spec(spec: StageSpec, rank: int = 0) -> ArtifactRef | None:
    """Run one stage in this process; returns the published ref (rank 0) or None."""
    from r1flow.stages import load_stage

    stage = load_stage(spec.stage)
    with _refusals():
        config = stage.Config.model_validate(spec.config)
        store = open_store(spec.store_root, s3_endpoint_url=spec.s3_endpoint_url)
        store.check()
        work_root = Path(spec.work_root or tempfile.gettempdir())
        work_root.mkdir(parents=True, exist_ok=True)
    with _scratch(work_root, spec.stage) as scratch:
        with _refusals():
            inputs = _resolve_inputs(store, spec, scratch / "inputs")
        workdir = scratch / "out"
        workdir.mkdir()
        return _run(stage, spec, config, store, inputs, workdir, work_root, rank)


def _run(stage: ModuleType, spec: StageSpec, config: Any, store: Store, inputs: dict[str, Path],
         workdir: Path, work_root: Path, rank: int) -> ArtifactRef | None:
    """The stage's checks and work in ``workdir``, then its artifact published (rank 0)."""
    tracking = spec.tracking_uri and spec.mlflow_run_id and rank == 0
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
        else:
            traceback.print_exc(file=sys.stdout)
            if is_transient(exc):  # a crash: the orchestrator retries it
                emit("error", kind="crash", message=f"{type(exc).__name__}: {exc}")
            else:  # the stage's own error: a retry would meet it again (and reload the model first)
                emit("error", kind="exception", message=f"{type(exc).__name__}: {exc}")
                code = EXIT_STAGE_ERROR
    if rank == 0 and spec.tracking_uri and spec.mlflow_run_id:
        mlflow_runs.end_run(spec.tracking_uri, spec.mlflow_run_id, status)
    return code


TRANSIENT = {  # (package, class) of errors that say the network or a peer was away, by name: no imports
    ("requests", "ConnectionError"), ("requests", "Timeout"), ("requests", "ChunkedEncodingError"),
    ("requests", "RetryError"), ("urllib3", "ProtocolError"), ("urllib3", "TimeoutError"),
    ("httpx", "TransportError"), ("httpcore", "NetworkError"), ("httpcore", "TimeoutException"),
    ("torch", "DistNetworkError"), ("torch", "DistBackendError"), ("torch", "DistStoreError"),
}
LOST_PEER = ("Connection closed by peer", "Connection reset by peer")  # gloo's RuntimeError when a rank died


def is_transient(exc: BaseException | None) -> bool:
    """Whether a stage's exception is worth a retry: S3 or the store unreachable, a connection
    refused, reset or timed out (built-in, botocore, requests/urllib3 as MLflow raises them,
    httpx as the hub client does), a peer rank lost (torch.distributed, gloo). Anything else is
    the stage's own, deterministic error. Follows the chain (``raise … from``, and an error raised
    while handling another: transformers' "couldn't connect", MLflow's "API request failed")."""
    from r1flow.store_s3 import is_transient as s3_transient

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        names = {(c.__module__.partition(".")[0], c.__name__) for c in type(exc).__mro__}
        lost_peer = isinstance(exc, RuntimeError) and any(m in str(exc) for m in LOST_PEER)
        if isinstance(exc, (ConnectionError, TimeoutError, StoreUnreachable)) or names & TRANSIENT or lost_peer:
            return True
        if s3_transient(exc):
            return True
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return False


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
