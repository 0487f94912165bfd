"""A pipeline run as the flows see it: its runtime, its MLflow parent run, and ``stage(...)``.

``PipelineRun.stage(name, **inputs)`` computes the stage's cache key, drops a stale cache record,
runs the stage task (``tasks.stage.run_stage``) and records on the MLflow parent run what
happened to the stage — done, cached or failed, with its artifact URI and the MLflow run that
produced it — which is what ``r1flow status`` reads back.

Resume (``r1flow resume NAME``, ``prefect flow-run retry``): the run's record in the store
(``r1flow.lineage``) names its MLflow parent run, which is reopened; completed stages are cache
hits; a stage that crashed resumes from its checkpoints — unless its config, inputs or code
changed since, which is refused (``ConfigChanged``) unless ``allow_config_change`` (then it
continues from the crashed attempt's checkpoint in a new MLflow run linked to the old one) or the
stage is refreshed (then it starts afresh).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from prefect import get_run_logger
from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.context import get_run_context
from prefect.filesystems import WritableFileSystem
from prefect.settings import PREFECT_UI_URL
from prefect.utilities.asyncutils import run_sync_in_worker_thread

from r1flow import cache, lineage, mlflow_runs, multinode
from r1flow.cache import code_version, stage_key
from r1flow.checkpoint import checkpoint_prefix, clear_saved
from r1flow.config import SHARDABLE, PipelineConfig
from r1flow.preflight import preflight
from r1flow.runtime import Runtime
from r1flow.store import ArtifactRef, open_store
from tasks import artifacts
from tasks.remote import run_stage_deployment
from tasks.stage import run_stage, run_stage_shard

RESUMABLE_FLOWS = ("r1-pipeline", "r1-zero")


class ConfigChanged(ValueError):
    """A crashed stage would resume under another config; refused unless allowed explicitly."""


class KeyMismatch(ValueError):
    """A stage flow launched by a pipeline computes another cache key than the pipeline did
    (another r1flow version on this pool, or inputs that resolve differently here)."""


class PipelineRun:
    def __init__(self, config: PipelineConfig, name: str, refresh: list[str] | None = None, *,
                 flow: str = "r1-pipeline", stages: tuple[str, ...] | None = None,
                 allow_config_change: bool = False, resume: bool = False, parent_run_id: str | None = None,
                 expected: dict[str, str] | None = None) -> None:
        self.config, self.name = config, lineage.check_name(name)
        self.expected = expected or {}  # the key and code version the launching pipeline computed
        self.owns_parent = parent_run_id is None  # a stage flow launched by a pipeline logs under its run
        self.allow_config_change = allow_config_change
        self.refresh = set(refresh or [])
        self.stages = stages or config.stage_names()
        unknown = self.refresh - set(self.stages)
        if unknown:
            raise ValueError(f"--refresh names unknown stage(s): {sorted(unknown)}")
        self.runtime = Runtime(pipeline_name=name, store_root=config.store.root,
                               s3_endpoint_url=config.store.s3_endpoint_url,
                               experiment=config.tracking.experiment, shared=config.shared(),
                               flow_run_url=_flow_run_url())
        # bad input fails before any stage starts; model sources are pinned (hub commit, content digest)
        self.config = config = preflight(config, self.runtime.store_root, stages)
        self.store = self.runtime.store()
        self._refuse_changed_configs(stages or config.stage_names())
        self.exp_id = self.runtime.experiment_id()
        self.flow_run_id = flow_run_id = _flow_run_id()
        self.parent_run_id = (parent_run_id or self._reopen_parent(flow, resume, flow_run_id)
                              or self._start_parent(flow))
        self.runtime.parent_run_id = self.parent_run_id
        self.record = None  # a one-stage flow is not resumed as a pipeline: it keeps no pipeline record
        if flow in RESUMABLE_FLOWS:
            self.record = lineage.PipelineRecord(name=name, flow=flow, config=config.model_dump(mode="json"),
                                                 parent_run_id=self.parent_run_id, flow_run_id=flow_run_id)
            lineage.write_pipeline(self.store, self.record)
        self.refs: dict[str, ArtifactRef] = {}
        self.result_storage = _saved_result_storage(self.runtime)

    def _start_parent(self, flow: str) -> str:
        run_id = mlflow_runs.start_run(
            self.runtime.tracking_uri, self.exp_id, self.name,
            tags={**self.runtime.tags(), "r1flow.preset": self.config.preset or "custom", "r1flow.flow": flow})
        mlflow_runs.log_params(self.runtime.tracking_uri, run_id,
                               mlflow_runs.flatten(self.config.model_dump(mode="json")))
        return run_id

    def _reopen_parent(self, flow: str, resume: bool, flow_run_id: str | None) -> str | None:
        """The unfinished MLflow parent run of this name, reopened — by ``r1flow resume``, or when
        Prefect retries the same flow run — if the config is unchanged (params are immutable)."""
        previous = lineage.read_pipeline(self.store, self.name) if flow in RESUMABLE_FLOWS else None
        if previous is None or previous.status in ("done", "cached"):
            return None
        if not (resume or (flow_run_id and previous.flow_run_id == flow_run_id)):
            return None
        if previous.config == self.config.model_dump(mode="json") and \
                mlflow_runs.reopen_run(self.runtime.tracking_uri, previous.parent_run_id):
            return previous.parent_run_id
        return None

    def _refuse_changed_configs(self, stages: tuple[str, ...]) -> None:
        """Before anything runs: a stage of this name that crashed with checkpoints and whose config,
        shared settings or code changed since is refused (``ConfigChanged``) unless refreshed or
        allowed; changed inputs are found per stage, once upstream has run (``_warm_start``)."""
        if self.allow_config_change:
            return
        for stage in stages:
            if stage in self.refresh:
                continue
            previous = lineage.read_attempt(self.store, self.name, stage)
            crashed = lineage.crashed_checkpoint(self.store, previous, self._output_of(previous))
            if crashed is None:
                continue
            section = self.config.section(stage)
            exclude = getattr(section, "cache_exclude", set())
            now = lineage.StageAttempt(  # its inputs are known only once upstream ran: not compared here
                stage=stage, key="", config={k: v for k, v in section.model_dump(mode="json").items()
                                             if k not in exclude},
                runtime=self.runtime.stage_runtime(), inputs=previous.inputs, code=code_version(stage))
            if changes := lineage.changed_since(previous, now):
                raise ConfigChanged(lineage.refusal(stage, self.name, crashed[1], changes))

    def _output_of(self, attempt: lineage.StageAttempt | None) -> str:
        return self.runtime.output_key(attempt.stage, attempt.key) if attempt else ""

    def stage(self, name: str, **inputs: ArtifactRef) -> ArtifactRef:
        """Run (or reuse) one stage and return its artifact."""
        section, config, exclude, key = self._keyed(name, inputs)
        attempt = lineage.StageAttempt(
            stage=name, key=key, config={k: v for k, v in config.items() if k not in exclude},
            runtime=self.runtime.stage_runtime(), inputs={k: v.digest for k, v in inputs.items()},
            code=code_version(name), flow_run_id=self.flow_run_id)
        attempt.warm_start = self._warm_start(attempt)
        if name in self.refresh and self.owns_parent and not self._retrying(attempt):
            # afresh: no resuming from this key's earlier checkpoints either — but only once: a
            # retry of this flow run (``prefect flow-run retry``) replays --refresh and must resume
            clear_saved(self.store, checkpoint_prefix(self.runtime.output_key(name, key)))
        cache.drop_stale_record(self.store, key, self.runtime.output_key(name, key))
        lineage.write_attempt(self.store, self.name, attempt)
        self._record(name, state="running",
                     inputs=json.dumps({k: v.uri for k, v in inputs.items()}, sort_keys=True))
        started, fresh = time.time(), name in self.refresh
        try:
            if section.launch.kind == "deployment":  # its own flow run on the deployment's work pool
                task = run_stage_deployment.with_options(result_storage=self.result_storage, refresh_cache=fresh)
                state = task(name, key, section.launch.model_dump(mode="json"), self._stage_flow_parameters(
                    name, inputs), self.runtime, fresh=fresh, return_state=True)
            else:  # a process on this worker
                task = run_stage.with_options(result_storage=self.result_storage, refresh_cache=fresh)
                state = task(name, key, config, inputs, self.runtime, fresh=fresh,
                             warm_start=attempt.warm_start, return_state=True)
        except BaseException as exc:  # a termination signal (cancelled run, stopped worker)
            self._ended(attempt, "failed" if isinstance(exc, Exception) else "killed")
            raise
        if not state.is_completed():
            self._ended(attempt, "failed")
            state.result()  # raises the stage's error
        ref: ArtifactRef = state.result()
        self._ended(attempt, "cached" if state.name == "Cached" else "done", uri=ref.uri,
                    run=ref.meta.get("mlflow_run_id", ""), seconds=f"{time.time() - started:.1f}")
        artifacts.stage_summary(self.name, name, attempt.status, ref, self.runtime.tracking_uri, self.exp_id)
        self.refs[name] = ref
        return ref

    def shard(self, name: str, index: int, count: int, **inputs: ArtifactRef) -> None:
        """Generate shard ``index`` of ``count`` of a generation stage: its chunks are saved under
        the stage's output key, for the merging run (no artifact, no MLflow run of its own)."""
        if name not in SHARDABLE or not 0 <= index < count:
            raise ValueError(f"shard [{index}, {count}] of stage {name}: need 0 <= i < N and a stage that "
                             f"splits into shards ({', '.join(SHARDABLE)})")
        _, config, _, key = self._keyed(name, inputs)
        run_stage_shard(name, key, config, inputs, self.runtime, index, count, fresh=name in self.refresh)

    def _keyed(self, name: str, inputs: dict[str, ArtifactRef]) -> tuple[Any, dict[str, Any], set[str], str]:
        """The stage's section, its config, the fields left out of its cache key, and the key —
        checked against the one the launching pipeline expects."""
        section = self.config.section(name)
        config = section.model_dump(mode="json")
        exclude = getattr(section, "cache_exclude", set())
        key = stage_key(name, config, self.runtime.stage_runtime(), inputs, exclude=exclude)
        self._check_expected(name, key)
        return section, config, exclude, key

    def _check_expected(self, stage: str, key: str) -> None:
        """Fail fast, before any work, when this side would compute another output than the
        pipeline that launched it expects to find."""
        if not self.expected or self.expected.get("key") == key:
            return
        theirs = self.expected.get("code", "")
        why = (f"r1flow here is code version {code_version(stage)[:12]}, the pipeline's is {theirs[:12]}: deploy "
               "the same r1flow on every pool" if theirs != code_version(stage) else
               "the config or inputs resolve differently on this pool")
        raise KeyMismatch(f"stage {stage}: cache key {key[:12]} here, {self.expected.get('key', '')[:12]} "
                          f"expected by the pipeline; {why}")

    def _retrying(self, attempt: lineage.StageAttempt) -> bool:
        """Is this the same flow run coming back to an unfinished attempt of the same work?"""
        previous = lineage.read_attempt(self.store, self.name, attempt.stage)
        return bool(previous and attempt.flow_run_id and previous.flow_run_id == attempt.flow_run_id
                    and previous.key == attempt.key and previous.status not in ("done", "cached"))

    def _stage_flow_parameters(self, stage: str, inputs: dict[str, ArtifactRef]) -> dict[str, Any]:
        """Parameters of the ``r1-stage`` flow that runs ``stage`` elsewhere: the same config (the
        stage launched locally there, with its processes, machines and strategy; its shards are the
        launching side's business), its inputs by URI, and this run's MLflow parent run."""
        config = self.config.model_dump(mode="json")
        config[stage]["launch"] = {**config[stage]["launch"], "kind": "local", "shards": 1}
        return {"stage": stage, "config": config, "inputs": {k: v.uri for k, v in inputs.items()},
                "name": self.name, "refresh": stage in self.refresh,
                "allow_config_change": self.allow_config_change, "parent_run_id": self.parent_run_id}

    def _warm_start(self, attempt: lineage.StageAttempt) -> str | None:
        """The checkpoints this attempt continues from when they are not under its own key: those
        of this name's crashed attempt under another key (inputs or code changed) are refused
        (``ConfigChanged``) unless the stage is refreshed or a config change is allowed."""
        if attempt.stage in self.refresh:
            return None
        previous = lineage.read_attempt(self.store, self.name, attempt.stage)
        if previous is None:
            return None
        if previous.key == attempt.key:
            return previous.warm_start if previous.status not in ("done", "cached") else None
        crashed = lineage.crashed_checkpoint(self.store, previous, self._output_of(previous))
        if crashed is None:
            return None
        prefix, saved = crashed
        changes = lineage.changed_since(previous, attempt)
        if not self.allow_config_change:
            raise ConfigChanged(lineage.refusal(attempt.stage, self.name, saved, changes))
        get_run_logger().warning("stage %s: continuing from %s under the changed config (%s)",
                                 attempt.stage, saved, "; ".join(changes))
        return prefix

    def _ended(self, attempt: lineage.StageAttempt, status: lineage.Status, **fields: str) -> None:
        attempt.status = status
        lineage.write_attempt(self.store, self.name, attempt)
        self._record(attempt.stage, state=status, **fields)

    def _record(self, stage: str, **fields: str) -> None:
        mlflow_runs.set_tags(self.runtime.tracking_uri, self.parent_run_id,
                             {f"r1flow.stage.{stage}.{k}": v for k, v in fields.items()})

    def __enter__(self) -> PipelineRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                artifacts.evaluation_table(self.name, self.refs, self.runtime.tracking_uri)
            finally:
                self.finish("FINISHED")
        elif not issubclass(exc_type, Exception):  # SIGTERM/SIGINT: Prefect's TerminationSignal, SystemExit
            self.finish("KILLED")
        else:
            self.finish("FAILED")

    def finish(self, status: str = "FINISHED") -> None:
        if (job := multinode.job_id()) and any(self.config.section(s).launch.machines > 1 for s in self.stages):
            multinode.release(self.store, job)  # the machines following this one may stop waiting
        if self.owns_parent:
            mlflow_runs.end_run(self.runtime.tracking_uri, self.parent_run_id, status)
        if self.record is not None:
            self.record.status = {"FINISHED": "done", "KILLED": "killed"}.get(status, "failed")
            lineage.write_pipeline(self.store, self.record)

    def summary(self) -> dict[str, Any]:
        return {"mlflow_parent_run": self.parent_run_id, "tracking_uri": self.runtime.tracking_uri,
                "experiment_id": self.exp_id, "flow_run": self.runtime.flow_run_url,
                "artifacts": {k: v.uri for k, v in self.refs.items()}}


class StoreRecords(WritableFileSystem):
    """Prefect's records of finished stage runs (the cache entries) kept in the r1flow store every
    worker shares (``r1flow.cache.RECORDS``), through the store's own client (S3 endpoint,
    credentials chain, retries): a stage finished on one machine is ``Cached`` on every other."""

    _block_type_name = "r1flow store records"
    store_root: str
    s3_endpoint_url: str | None = None

    def _store(self):
        return open_store(self.store_root, s3_endpoint_url=self.s3_endpoint_url)

    async def aread_path(self, path: str) -> bytes | None:
        return await run_sync_in_worker_thread(cache.read_record, self._store(), path)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes | None:  # None: no record, no cache hit
        return cache.read_record(self._store(), path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        await run_sync_in_worker_thread(cache.write_record, self._store(), path, content)
        return path

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> str:
        cache.write_record(self._store(), path, content)
        return path


def _saved_result_storage(runtime: Runtime) -> str:
    """Where Prefect keeps the stage tasks' records: the run's store, as a saved block (Prefect
    requires one to read a record back; one per store, whichever machine saves it)."""
    where = f"{runtime.store_root} {runtime.s3_endpoint_url or ''}"
    name = "r1flow-records-" + hashlib.sha256(where.encode()).hexdigest()[:12]
    records = StoreRecords(store_root=runtime.store_root, s3_endpoint_url=runtime.s3_endpoint_url)
    records.save(name, overwrite=True)
    return f"{StoreRecords.get_block_type_slug()}/{name}"


def _flow_run_id() -> str | None:
    try:
        return str(get_run_context().flow_run.id)
    except Exception:
        return None


def _flow_run_url() -> str | None:
    try:
        run = get_run_context().flow_run
    except Exception:
        return None
    base = PREFECT_UI_URL.value()
    return f"{base}/runs/flow-run/{run.id}" if base else f"prefect-flow-run:{run.id}"
