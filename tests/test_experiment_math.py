"""The numbers the paper-findings experiment stands on, against hand-derived values."""

from __future__ import annotations

import pytest

from r1flow.experiments.claims import beats, mean_std
from r1flow.flops import comparable, grpo_step_flops, sft_flops


def test_sft_flops_is_six_n_t():
    assert sft_flops(200_000, 10_000) == 6 * 200_000 * 10_000


@pytest.mark.parametrize("mu, reference, forwards", [
    (1, False, 0),  # generation 2N + update 6N per token
    (1, True, 1),   # + the reference model's forward
    (2, True, 2),   # + the old policy's forward; the update runs twice
])
def test_grpo_step_flops_counts_every_pass(mu, reference, forwards):
    n, prompt, completion = 1_000, 64, 256  # 320 tokens in the rollout batch
    expected = 2 * n * 320 + 6 * n * 320 * mu + 2 * n * 320 * forwards
    assert grpo_step_flops(n, prompt, completion, mu=mu, reference=reference) == expected


def test_comparable_compute_is_within_ten_percent_either_way():
    assert comparable(1.10e12, 1.0e12) and comparable(1.0e12, 1.10e12)
    assert not comparable(1.11e12, 1.0e12)
    with pytest.raises(ValueError, match="positive"):
        comparable(0.0, 1.0)


def test_mean_and_sample_std():
    assert mean_std([0.2, 0.4]) == pytest.approx((0.3, 0.1414213562), abs=1e-9)  # sqrt(0.02)
    assert mean_std([0.5]) == (0.5, 0.0)


def test_a_claim_holds_only_when_every_seed_agrees_and_the_mean_gain_is_enough():
    held = beats("cons@k >= pass@1", [0.40, 0.42, 0.38], [0.40, 0.39, 0.35])  # diffs 0, .03, .03
    assert held.holds and held.gain == pytest.approx((0.02, 0.0173205081), abs=1e-9)
    assert "reproduced" in held.line() and "3 of 3 seeds agree" in held.line()
    small = beats("cold start is faster", [0.52, 0.53, 0.51], [0.50, 0.50, 0.50], min_gain=0.05)
    assert not small.holds and "NOT reproduced" in small.line()  # all agree, mean gain 0.02 < 0.05
    with pytest.raises(ValueError, match="paired"):
        beats("x", [0.1], [0.1, 0.2])


def test_the_experiment_config_is_fixed_in_the_repo_and_validated(tmp_path):
    from r1flow.config import ConfigError
    from r1flow.experiments.config import load_findings

    cfg = load_findings()
    assert cfg.seeds == [0, 1, 2] and cfg.compute_tolerance == 0.10 and cfg.thresholds.r1_zero_gain == 0.05
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: []\nthresholds: {cold_start_target: 2}\n")
    with pytest.raises(ConfigError, match="seeds") as err:
        load_findings(bad)
    assert "cold_start_target" in str(err.value) and str(bad) in str(err.value)
