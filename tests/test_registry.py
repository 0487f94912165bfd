"""The model registry by reference (real MLflow on sqlite) and the champion rule (hand values)."""

from __future__ import annotations

import pytest

from r1flow import registry
from r1flow.store import ArtifactRef


def _tags(value: str | None, digest: str = "d1") -> dict[str, str]:
    tags = {"r1flow.eval.arith_heldout.digest": digest}
    if value is not None:
        tags["r1flow.eval.arith_heldout.pass_at_1"] = value
    return tags


RULE = {"benchmark": "arith_heldout", "metric": "pass_at_1", "margin": 0.02}


@pytest.mark.parametrize("candidate, champion, promote, reason", [
    (_tags("0.30"), None, True, "there was no champion"),
    (_tags("0.32"), _tags("0.30"), True, "beats champion v1's 0.3 by at least 0.02"),   # 0.32 − 0.30 = 0.02: enough
    (_tags("0.319"), _tags("0.30"), False, "does not beat champion v1's 0.3 by 0.02"),  # 0.019 < 0.02
    (_tags("0.90"), _tags("0.30", digest="d2"), False, "not measured on the same arith_heldout digest"),
    (_tags(None), _tags("0.30"), False, "has no arith_heldout/pass_at_1 evaluation"),
])
def test_champion_rule(candidate, champion, promote, reason):
    decision = registry.decide(candidate, champion, champion_version="1", **RULE)
    assert decision.promote is promote and reason in decision.reason
    assert decision.tags["r1flow.promotion.margin"] == "0.02"
    assert decision.tags["r1flow.promotion.benchmark_digest"] == candidate["r1flow.eval.arith_heldout.digest"]
    if champion and "r1flow.eval.arith_heldout.pass_at_1" in candidate and promote:
        assert decision.tags["r1flow.promotion.champion_value"] == "0.3"


def test_register_by_reference_resolve_and_promote(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = ArtifactRef(uri=str(tmp_path / "store/artifacts/final_rl/a"), digest="a" * 64)
    second = ArtifactRef(uri="s3://bucket/runs/artifacts/final_rl/b", digest="b" * 64)
    v1 = registry.register(uri, "m", first, tags=_tags("0.30"))
    assert registry.register(uri, "m", first).version == v1.version == "1"  # the same artifact: its version
    v2 = registry.register(uri, "m", second, tags=_tags("0.31"))
    assert v2.version == "2" and registry.resolve(uri, "models:/m@candidate").source == second.uri
    assert registry.resolve(uri, "models:/m/1").source == first.uri
    assert registry.resolve(uri, "models:/m/latest").digest == second.digest

    registry.promote(uri, v1, registry.decide(v1.tags, None, **RULE))
    assert registry.champion(uri, "m").version == "1"
    kept = registry.decide(v2.tags, registry.champion(uri, "m").tags, champion_version="1", **RULE)
    registry.promote(uri, v2, kept)
    assert registry.champion(uri, "m").version == "1"
    recorded = registry.resolve(uri, "models:/m/2").tags
    assert recorded["r1flow.promotion.decision"] == "kept" and recorded["r1flow.promotion.champion_value"] == "0.3"

    registry.promote_by_hand(uri, "m", "2", "reviewed by hand")
    chosen = registry.resolve(uri, "models:/m@champion")
    assert chosen.version == "2" and chosen.tags["r1flow.promotion.reason"] == "reviewed by hand"
    assert chosen.tags["r1flow.promotion.champion_version"] == "1"


@pytest.mark.parametrize("bad", ["models:/m@nope", "models:/m/9", "models:/nope/latest", "models:/m", "m@champion"])
def test_unknown_model_references_name_themselves(tmp_path, bad):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry.register(uri, "m", ArtifactRef(uri=str(tmp_path / "a"), digest="a" * 64))
    with pytest.raises(registry.RegistryError, match=bad.replace("/", ".")):
        registry.resolve(uri, bad)
