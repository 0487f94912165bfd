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


# --- the five verdicts from arms' numbers (r1flow.experiments.report) ------------------------

def _arm(curve: list[tuple[int, float]], flops: float = 0.0, **end: float):
    from r1flow.experiments.report import Arm, eval_key

    history = [(step, {eval_key("pass_at_1"): v, eval_key("format_rate"): 0.5, eval_key("mixed_language_rate"): 0.2,
                       eval_key("mean_length"): 30.0, eval_key("cons_at_4"): v}) for step, v in curve]
    final = {**history[-1][1], **{eval_key(k): v for k, v in end.items()}, eval_key("num_problems"): 500.0,
             "train_flops": flops}
    return Arm(history, final)


def _seed(shift: float, distill_flops: float = 1e12, rl_flops: float = 1.05e12):
    return {
        "zero": _arm([(0, 0.30 + shift), (40, 0.45), (80, 0.52), (120, 0.56)], cons_at_4=0.60 + shift),
        "language": _arm([(0, 0.30), (120, 0.54)], mixed_language_rate=0.05),
        "cold": _arm([(0, 0.40), (40, 0.51), (120, 0.58)], format_rate=0.9),
        "distill": _arm([(0, 0.40)], flops=distill_flops),
        "student_rl": _arm([(0, 0.10), (60, 0.15 + shift)], flops=rl_flops),
    }


def test_the_five_verdicts_from_hand_made_arms():
    from r1flow.experiments.config import FindingsConfig
    from r1flow.experiments.report import render, verdicts

    spec = FindingsConfig()
    arms = {0: _seed(0.0), 1: _seed(0.01), 2: _seed(-0.01)}
    found = verdicts(spec, arms, k=4, horizon=120)
    assert [v.claim.split(".")[0] for v in found] == ["1", "2", "3a", "3b", "4a", "4b", "5"]
    assert all(v.holds for v in found), [v.line() for v in found]
    by = {v.claim.split(".")[0]: v for v in found}
    assert by["1"].gain[0] == pytest.approx(0.56 - 0.30)      # end − start, mean over seeds (shift cancels)
    assert by["2"].gain[0] == pytest.approx(0.60 - 0.56)      # cons@4 − pass@1
    assert by["3a"].gain == (40.0, 0.0)                     # 0.5 reached at step 80 from the base, 40 after cold start
    assert by["4a"].gain[0] == pytest.approx(1 - 0.05 / 0.2)  # mixed rate 0.2 → 0.05: a 75% cut
    assert by["4b"].gain[0] == pytest.approx(0.02)            # 0.56 − 0.54
    assert by["5"].gain[0] == pytest.approx(0.40 - 0.15)
    # RL given 30% more FLOPs than distillation: not comparable, so claim 5 cannot be read
    tie = {s: _seed(0.0) for s in (0, 1, 2)}  # "better-formed" needs better on every seed, not equal
    for by_arm in tie.values():
        by_arm["cold"].final["eval/arith_heldout/format_rate"] = 0.5
    assert not verdicts(spec, tie, k=4, horizon=120)[3].holds
    unfair = {s: _seed(0.0, rl_flops=1.3e12) for s in (0, 1, 2)}
    five = verdicts(spec, unfair, k=4, horizon=120)[-1]
    assert not five.holds and "compute NOT within ±10% (RL/distill FLOPs 1.30, 1.30, 1.30)" in five.detail
    text = render(spec, "tiny", arms, found, 4, 120, quick=False, plots=["r1_zero_curves.png"])
    assert "## Verdicts (7 of 7 reproduced)" in text and "500 problems × 4 samples" in text
    assert "| R1-Zero (GRPO from the base) | 0.560 ± 0.000 | 0.600 ± 0.010 |" in text
    assert "from the base [80, 80, 80], after cold start [40, 40, 40]" in text


