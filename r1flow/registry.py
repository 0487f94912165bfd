"""MLflow Model Registry, by reference: a version's ``source`` is the artifact's store URI
(``s3://…/artifacts/final_rl/<key>`` or a local store path); weights are never copied.

A pipeline registers its final model and its students; the new version gets the alias
``candidate``. Registering the same artifact again (a cached re-run) finds its version instead of
adding one. ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` and ``models:/NAME/latest`` resolve
back to the store URI, which is how the nightly evaluation finds the model it evaluates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from r1flow import mlflow_runs
from r1flow.store import ArtifactRef

CANDIDATE = "candidate"
TAG_DIGEST = "r1flow.artifact_digest"
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+|latest))$")


class RegistryError(LookupError):
    """A model reference that names no registered version."""


@dataclass(frozen=True)
class Version:
    name: str
    version: str
    source: str
    digest: str


def is_model_uri(text: str) -> bool:
    return text.startswith("models:/")


def _version(v) -> Version:
    return Version(v.name, str(v.version), v.source, (v.tags or {}).get(TAG_DIGEST, ""))


def register(tracking_uri: str, name: str, ref: ArtifactRef, *, run_id: str = "", tags: dict[str, Any] | None = None,
             aliases: tuple[str, ...] = (CANDIDATE,)) -> Version:
    """The version of ``name`` whose source is ``ref`` (created if none has that source and digest),
    with ``aliases`` pointing at it."""
    from mlflow.exceptions import MlflowException

    client = mlflow_runs.client(tracking_uri)
    try:
        client.create_registered_model(name, description="r1flow models, registered by their store URI")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    same = [v for v in client.search_model_versions(f"name = '{name}'")
            if v.source == ref.uri and (v.tags or {}).get(TAG_DIGEST) == ref.digest]
    if same:
        version = same[0]
    else:
        version = client.create_model_version(name, source=ref.uri, run_id=run_id or None, tags={
            TAG_DIGEST: ref.digest, **{k: str(v) for k, v in (tags or {}).items()}})
    for alias in aliases:
        client.set_registered_model_alias(name, alias, str(version.version))
    return _version(version)


def resolve(tracking_uri: str, model_uri: str) -> Version:
    """The registered version a ``models:/`` URI names."""
    from mlflow.exceptions import MlflowException

    match = _MODEL_URI.match(model_uri)
    if not match:
        raise RegistryError(f"{model_uri!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/latest")
    client = mlflow_runs.client(tracking_uri)
    name = match["name"]
    try:
        if match["alias"]:
            return _version(client.get_model_version_by_alias(name, match["alias"]))
        if match["version"] != "latest":
            return _version(client.get_model_version(name, match["version"]))
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        raise RegistryError(f"{model_uri}: no such registered model version ({exc.message})") from None
    if not versions:
        raise RegistryError(f"{model_uri}: registered model {name!r} has no versions")
    return _version(max(versions, key=lambda v: int(v.version)))


def set_version_tags(tracking_uri: str, version: Version, tags: dict[str, Any]) -> None:
    client = mlflow_runs.client(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, str(value))
