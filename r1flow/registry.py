"""MLflow Model Registry, by reference: a version's ``source`` is the artifact's store URI
(``s3://…/artifacts/final_rl/<key>`` or a local store path); weights are never copied.

A pipeline registers its final model and its students; the new version gets the alias
``candidate``, and ``champion`` when ``decide`` says its held-out metric beats the champion's by
the configured margin on the same benchmark digest (the decision and its numbers are recorded on
the version). Registering the same artifact again (a cached re-run) finds its version instead of
adding one. ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` and ``models:/NAME/latest`` resolve
back to the store URI, which is how the nightly evaluation finds the model it evaluates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from r1flow import mlflow_runs
from r1flow.store import ArtifactRef

CANDIDATE = "candidate"
CHAMPION = "champion"
EVAL_TAG = "r1flow.eval."  # r1flow.eval.<bench>.<metric>, r1flow.eval.<bench>.digest
TAG_DIGEST = "r1flow.artifact_digest"
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # a missing model, version or alias
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+|latest))$")


class RegistryError(LookupError):
    """A model reference that names no registered version."""


@dataclass(frozen=True)
class Version:
    name: str
    version: str
    source: str
    digest: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    tags: dict[str, str]


def decide(candidate: dict[str, str], champion: dict[str, str] | None, *, benchmark: str, metric: str,
           margin: float, champion_version: str = "") -> Decision:
    """Promote the candidate (version tags ``candidate``) over the champion (its tags, None when
    there is none) when candidate − champion ≥ ``margin`` on ``benchmark``/``metric``, both
    measured on the same benchmark digest. The returned tags record the numbers either way.

    >>> decide({"r1flow.eval.b.m": "0.5", "r1flow.eval.b.digest": "d"},
    ...        {"r1flow.eval.b.m": "0.45", "r1flow.eval.b.digest": "d"}, benchmark="b", metric="m", margin=0.05).promote
    True
    """
    value_key, digest_key = f"{EVAL_TAG}{benchmark}.{metric}", f"{EVAL_TAG}{benchmark}.digest"
    record = {"r1flow.promotion.benchmark": benchmark, "r1flow.promotion.metric": metric,
              "r1flow.promotion.margin": f"{margin:g}",
              "r1flow.promotion.benchmark_digest": candidate.get(digest_key, "")}
    if value_key not in candidate:
        return Decision(False, f"the candidate has no {benchmark}/{metric} evaluation", record)
    value = float(candidate[value_key])
    record["r1flow.promotion.candidate_value"] = f"{value:.6g}"
    if champion is None:
        return Decision(True, "there was no champion", record)
    record["r1flow.promotion.champion_version"] = champion_version
    if champion.get(digest_key) != candidate.get(digest_key) or value_key not in champion:
        return Decision(False, f"champion v{champion_version} was not measured on the same {benchmark} "
                               "digest (problems and settings): promote by hand if intended", record)
    best = float(champion[value_key])
    record["r1flow.promotion.champion_value"] = f"{best:.6g}"
    if value - best >= margin - 1e-9:  # tags hold 6 significant digits: 0.5 − 0.45 is a gain of 0.05
        return Decision(True, f"{metric} {value:.4g} beats champion v{champion_version}'s {best:.4g} "
                              f"by at least {margin:g}", record)
    return Decision(False, f"{metric} {value:.4g} does not beat champion v{champion_version}'s {best:.4g} "
                           f"by {margin:g}", record)


def is_model_uri(text: str) -> bool:
    return text.startswith("models:/")


def _version(v) -> Version:
    return Version(v.name, str(v.version), v.source, (v.tags or {}).get(TAG_DIGEST, ""), dict(v.tags or {}))


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
        if exc.error_code not in _NOT_FOUND:  # the registry is away or refuses: not the reference's fault
            raise
        raise RegistryError(f"{model_uri}: no such registered model version ({exc.message})") from None
    if not versions:
        raise RegistryError(f"{model_uri}: registered model {name!r} has no versions")
    return _version(max(versions, key=lambda v: int(v.version)))


def champion(tracking_uri: str, name: str) -> Version | None:
    try:
        return resolve(tracking_uri, f"models:/{name}@{CHAMPION}")
    except RegistryError:
        return None


def promote(tracking_uri: str, version: Version, decision: Decision) -> None:
    """Record ``decision`` on ``version`` and, if it says so, point ``champion`` at it."""
    tags = {**decision.tags, "r1flow.promotion.decision": "promoted" if decision.promote else "kept",
            "r1flow.promotion.reason": decision.reason}
    set_version_tags(tracking_uri, version, tags)
    if decision.promote:
        mlflow_runs.client(tracking_uri).set_registered_model_alias(version.name, CHAMPION, version.version)


def promote_by_hand(tracking_uri: str, name: str, version: str, reason: str) -> Version:
    """``r1flow promote``: make ``version`` the champion, recording who decided and why."""
    chosen = resolve(tracking_uri, f"models:/{name}/{version}")
    previous = champion(tracking_uri, name)
    client = mlflow_runs.client(tracking_uri)
    for key in chosen.tags:  # the rule's numbers from when it was registered no longer explain the alias
        if key.startswith("r1flow.promotion."):
            client.delete_model_version_tag(name, chosen.version, key)
    promote(tracking_uri, chosen, Decision(True, reason or "promoted by hand", {
        "r1flow.promotion.by_hand": "true",
        "r1flow.promotion.champion_version": previous.version if previous else ""}))
    return chosen


def set_version_tags(tracking_uri: str, version: Version, tags: dict[str, Any]) -> None:
    client = mlflow_runs.client(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, str(value))
