"""A pipeline run as the flows see it: its runtime, its MLflow parent run, and ``stage(...)``.

``PipelineRun.stage(name, **inputs)`` computes the stage's cache key, drops a stale cache record,
runs the stage task (``tasks.stage.run_stage``) and records on the MLflow parent run what
happened to the stage — done, cached or failed, with its artifact URI and the MLflow run that
produced it — which is what ``r1flow status`` reads back.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from prefect.context import get_run_context
from prefect.filesystems import LocalFileSystem
from prefect.settings import PREFECT_UI_URL

from r1flow import mlflow_runs
from r1flow.cache import stage_key
from r1flow.config import PipelineConfig
from r1flow.preflight import preflight
from r1flow.runtime import Runtime
from r1flow.store import ArtifactRef
from tasks.stage import invalidate_stale, run_stage


class PipelineRun:
    def __init__(self, config: PipelineConfig, name: str, refresh: list[str] | None = None) -> None:
        self.config = config
        self.refresh = set(refresh or [])
        unknown = self.refresh - set(config.stage_names())
        if unknown:
            raise ValueError(f"--refresh names unknown stage(s): {sorted(unknown)}")
        self.runtime = Runtime(pipeline_name=name, store_root=config.store.root,
                               s3_endpoint_url=config.store.s3_endpoint_url,
                               experiment=config.tracking.experiment, shared=config.shared(),
                               flow_run_url=_flow_run_url())
        preflight(config, self.runtime.store_root)  # bad input fails before any stage starts
        self.exp_id = self.runtime.experiment_id()
        self.parent_run_id = mlflow_runs.start_run(
            self.runtime.tracking_uri, self.exp_id, name,
            tags={**self.runtime.tags(), "r1flow.preset": config.preset or "custom"})
        self.runtime.parent_run_id = self.parent_run_id
        mlflow_runs.log_params(self.runtime.tracking_uri, self.parent_run_id,
                               mlflow_runs.flatten(config.model_dump(mode="json")))
        self.refs: dict[str, ArtifactRef] = {}
        self.result_storage = _saved_result_storage(str(self.runtime.results_dir))

    def stage(self, name: str, **inputs: ArtifactRef) -> ArtifactRef:
        """Run (or reuse) one stage and return its artifact."""
        section = self.config.section(name)
        config = section.model_dump(mode="json")
        key = stage_key(name, config, self.runtime.stage_runtime(), inputs,
                        exclude=getattr(section, "cache_exclude", set()))
        invalidate_stale(name, key, self.runtime)
        self._record(name, state="running",
                     inputs=json.dumps({k: v.uri for k, v in inputs.items()}, sort_keys=True))
        started = time.time()
        task = run_stage.with_options(result_storage=self.result_storage,
                                      refresh_cache=name in self.refresh)
        state = task(name, key, config, inputs, self.runtime, fresh=name in self.refresh, return_state=True)
        if not state.is_completed():
            self._record(name, state="failed")
            state.result()  # raises the stage's error
        ref: ArtifactRef = state.result()
        cached = state.name == "Cached"
        self._record(name, state="cached" if cached else "done", uri=ref.uri,
                     run=ref.meta.get("mlflow_run_id", ""), seconds=f"{time.time() - started:.1f}")
        self.refs[name] = ref
        return ref

    def _record(self, stage: str, **fields: str) -> None:
        mlflow_runs.set_tags(self.runtime.tracking_uri, self.parent_run_id,
                             {f"r1flow.stage.{stage}.{k}": v for k, v in fields.items()})

    def __enter__(self) -> PipelineRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("FINISHED" if exc_type is None else "FAILED")

    def finish(self, status: str = "FINISHED") -> None:
        mlflow_runs.end_run(self.runtime.tracking_uri, self.parent_run_id, status)

    def summary(self) -> dict[str, Any]:
        return {"mlflow_parent_run": self.parent_run_id, "tracking_uri": self.runtime.tracking_uri,
                "experiment_id": self.exp_id, "flow_run": self.runtime.flow_run_url,
                "artifacts": {k: v.uri for k, v in self.refs.items()}}


def _saved_result_storage(path: str) -> str:
    """Prefect's cache records beside the store, as a saved block (Prefect requires one)."""
    name = "r1flow-results-" + hashlib.sha256(path.encode()).hexdigest()[:12]
    LocalFileSystem(basepath=path).save(name, overwrite=True)
    return f"local-file-system/{name}"


def _flow_run_url() -> str | None:
    try:
        run = get_run_context().flow_run
    except Exception:
        return None
    base = PREFECT_UI_URL.value()
    return f"{base}/runs/flow-run/{run.id}" if base else f"prefect-flow-run:{run.id}"
