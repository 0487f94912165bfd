"""Which model a flow means, and what a pipeline registers.

A model is named in one of three ways (``r1flow evaluate MODEL``, the ``r1-evaluation``
deployment's ``model`` parameter):

- ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/NAME/latest`` — a registered version
  (``r1flow.registry``); its source is the artifact's store URI, and its digest must still match
  (a source in another store than the flow's, e.g. the nightly evaluation's local store and an
  ``s3://`` candidate, is verified there and copied in: ``store.s3_endpoint_url`` reaches it);
- ``run:NAME`` or ``run:NAME/STAGE`` — the newest model of pipeline run NAME (``final_rl`` if it
  got that far, else the last model-producing stage it finished), or that stage's;
- an artifact URI or path in the store;
- a model r1flow did not train: a hub id (``ORG/NAME`` or ``ORG/NAME@REVISION``), a folder in hub
  layout or an ``s3://`` mirror — pinned (``r1flow.loading``) into a small artifact holding only
  ``model/source.json``, so its evaluation is cached and compared like any other.

A pipeline registers its final model as ``tracking.registered_model`` and its student as
``…-student``, each with the alias ``candidate`` and its evaluation as version tags, and makes it
``champion`` when it beats the current one (``tracking.promotion``, ``registry.decide``).
"""

from __future__ import annotations

import contextlib

from prefect import get_run_logger

from r1flow import mlflow_runs, registry
from r1flow.config import ConfigError, PipelineConfig
from r1flow.runtime import Runtime
from r1flow.store import ArtifactRef, StoreError

MODEL_STAGES = ("final_rl", "sft", "reasoning_rl", "cold_start", "r1_zero", "base", "distill")
EVAL_TAG = registry.EVAL_TAG  # the evaluation of the stage that made the model
EVALUATED_PREFIX = "r1flow.evaluated."  # the newest run of the evaluation flow on it


def resolve_model(model: str, config: PipelineConfig, runtime: Runtime) -> tuple[ArtifactRef, registry.Version | None]:
    """The artifact ``model`` names (and its registered version, if named so); a ``ConfigError``
    naming ``model`` when it names nothing evaluable."""
    version = None
    try:
        if registry.is_model_uri(model):
            version = registry.resolve(runtime.tracking_uri, model)
            uri = version.source
        elif model.startswith("run:"):
            uri = _model_of_run(runtime.tracking_uri, model[4:], config)
        else:
            uri = model
        store = runtime.store()
        ref = _stored(uri, config, store) or _source_artifact(model, config, store)
    except (LookupError, StoreError, ValueError) as exc:
        raise ConfigError(f"model {model!r}: {exc}") from None
    if version and version.digest and version.digest != ref.digest:
        raise ConfigError(f"model {model!r}: the artifact at {uri} changed since version {version.version} was "
                          f"registered (digest {ref.digest[:12]}, registered {version.digest[:12]})")
    return ref, version


def _stored(uri: str, config: PipelineConfig, store) -> ArtifactRef | None:
    """The complete artifact at ``uri`` in the runtime's store — one in another store (a registered
    version's ``s3://`` source in another bucket or prefix than this flow's store) verified there
    and copied in, under ``imported/<digest>``, where the stage reads it; None when there is none."""
    import tempfile

    from r1flow.store import open_store

    root = store.root_uri.rstrip("/")
    if "://" not in uri or uri == root or uri.startswith(root + "/"):  # a key or a URI in this store
        return store.ref(uri) if store.verify(uri) else None
    if not uri.startswith(("s3://", "file://")):
        return None
    other = open_store(uri, s3_endpoint_url=config.store.s3_endpoint_url)
    if not other.verify(uri):
        return None  # e.g. an s3:// mirror in hub layout (``_source_artifact``)
    ref = other.ref(uri)
    key = f"imported/{ref.digest[:24]}"
    if not store.verify(key):
        with tempfile.TemporaryDirectory() as tmp:
            other.get_dir(uri, tmp)  # every sha256 checked against the manifest
            store.put_dir(tmp, key, meta={**ref.meta, "imported_from": uri})
    return store.ref(key)


def _source_artifact(model: str, config: PipelineConfig, store) -> ArtifactRef:
    """The artifact standing for a hub id, folder or s3:// mirror (see the module doc)."""
    import json
    import tempfile
    from pathlib import Path

    from r1flow.loading import SourceError, pin
    from r1flow.store import digest_json

    source, _, revision = model.rpartition("@") if "@" in model and not model.startswith("s3://") else (model, "", "")
    try:
        resolved = pin(source, revision or None, s3_endpoint_url=config.store.s3_endpoint_url)
    except SourceError as exc:
        raise LookupError(f"neither a complete artifact in the store nor a model source ({exc})") from None
    spec = {"source": source, "revision": revision or None, "trust_remote_code": False, "resolved": resolved}
    key = f"sources/{digest_json(spec)[:24]}"
    if not store.verify(key):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "model").mkdir()
            (Path(tmp) / "model" / "source.json").write_text(json.dumps(spec, indent=1))
            store.put_dir(tmp, key, meta={"stage": "source"})
    return store.ref(key)


def _model_of_run(tracking_uri: str, spec: str, config: PipelineConfig) -> str:
    name, _, stage = spec.partition("/")
    if stage:
        config.section(stage)  # an unknown stage name fails here, naming the known ones
    for run in mlflow_runs.find_pipeline_runs(tracking_uri, name, config.tracking.experiment):
        tags = run.data.tags
        for candidate in (stage,) if stage else MODEL_STAGES:
            if tags.get(f"r1flow.stage.{candidate}.state") in ("done", "cached"):
                return tags[f"r1flow.stage.{candidate}.uri"]
    raise LookupError(f"no pipeline run named {name!r} finished " + (f"stage {stage}" if stage else "a model stage"))


def registered_name(config: PipelineConfig) -> str:
    return config.tracking.registered_model.format(preset=config.preset or "custom")


def register_outputs(config: PipelineConfig, runtime: Runtime, pipeline: str, final: ArtifactRef,
                     student: ArtifactRef | None = None) -> list[registry.Version]:
    """Register the final model and the student, by reference, with the alias ``candidate``."""
    name = registered_name(config)
    if not name:
        return []
    versions = []
    for model_name, ref in ((name, final), (f"{name}-student", student)):
        if ref is None:
            continue
        try:
            version = _register(config, runtime, pipeline, model_name, ref)
        except Exception as exc:  # noqa: BLE001 - the models are built and stored: registering is bookkeeping
            get_run_logger().warning("could not register %s as %s: %s%s", ref.uri, model_name, exc,
                                     _LOCAL_HINT if ref.uri.startswith(("/", "file:")) else "")
            with contextlib.suppress(Exception):  # the tracking server may be what is away
                mlflow_runs.set_tags(runtime.tracking_uri, runtime.parent_run_id, {
                    f"r1flow.registry_error.{model_name}": str(exc)[:500]})
            continue
        versions.append(version)
    return versions


def _register(config: PipelineConfig, runtime: Runtime, pipeline: str, model_name: str,
              ref: ArtifactRef) -> registry.Version:
    run_id = ref.meta.get("mlflow_run_id", "")
    tags = {"r1flow.pipeline": pipeline, "r1flow.stage": ref.meta.get("stage", ""),
            "r1flow.parent_run": runtime.parent_run_id or "", **evaluation_tags(runtime.tracking_uri, run_id)}
    version = registry.register(runtime.tracking_uri, model_name, ref, run_id=run_id, tags=tags)
    get_run_logger().info("registered %s as models:/%s/%s (alias %s)", ref.uri, model_name,
                          version.version, registry.CANDIDATE)
    _crown_if_better(config, runtime, version)
    return version


def _crown_if_better(config: PipelineConfig, runtime: Runtime, version: registry.Version) -> None:
    """The champion rule (``registry.decide``), once per version: a cached re-run that registers
    the same artifact again does not decide again."""
    if "r1flow.promotion.decision" in version.tags:
        return
    current = registry.champion(runtime.tracking_uri, version.name)
    rule = config.tracking.promotion
    decision = registry.decide(version.tags, current.tags if current else None, benchmark=rule.benchmark,
                               metric=rule.metric, margin=rule.margin,
                               champion_version=current.version if current else "")
    registry.promote(runtime.tracking_uri, version, decision)
    get_run_logger().info("models:/%s/%s %s: %s", version.name, version.version,
                          "is the new champion" if decision.promote else "stays a candidate", decision.reason)


_LOCAL_HINT = (" (an MLflow tracking server registers only sources it could reach: use an S3 store, "
               "store.root: s3://…, or set tracking.registered_model: '' to skip)")


def evaluation_tags(tracking_uri: str, run_id: str, prefix: str = EVAL_TAG) -> dict[str, str]:
    """A stage run's held-out evaluation as version tags ``<prefix><bench>.<metric>``."""
    if not run_id:
        return {}
    data = mlflow_runs.client(tracking_uri).get_run(run_id).data
    values = {prefix + key[len("eval/"):].replace("/", "."): f"{value:.6g}"
              for key, value in data.metrics.items() if key.startswith("eval/") and key.count("/") == 2}
    digests = {prefix + key[len(EVAL_TAG):]: value for key, value in data.tags.items()
               if key.startswith(EVAL_TAG) and key.endswith(".digest")}
    return {**values, **digests}


def record_evaluation(runtime: Runtime, version: registry.Version, result: ArtifactRef) -> None:
    """The latest evaluation of a registered version (the nightly one), as its tags."""
    run_id = result.meta.get("mlflow_run_id", "")
    try:
        registry.set_version_tags(runtime.tracking_uri, version, {
            **evaluation_tags(runtime.tracking_uri, run_id, EVALUATED_PREFIX), EVALUATED_PREFIX + "run": run_id,
            EVALUATED_PREFIX + "artifact": result.uri})
    except Exception as exc:  # noqa: BLE001 - the evaluation itself is done and logged in its run
        get_run_logger().warning("could not tag models:/%s/%s with this evaluation: %s", version.name,
                                 version.version, exc)
