"""A claim of the paper checked over seeds: mean ± sample standard deviation of each arm, and a
verdict that says plainly when the tiny scale does not reproduce it.

A claim "A beats B" holds when the mean difference over paired seeds is at least ``min_gain`` and
the per-seed differences all point the same way (with 3 seeds there is no honest significance
test; agreement of every seed is the bar). "A ≥ B" claims (cons@k ≥ pass@1) use ``min_gain`` 0.
The other shapes: "A reaches a target in fewer steps" (``sooner``), "A cuts a rate by a share"
(``cuts``) and "A costs at most so much" (``costs_at_most``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); the std of one value is 0.

    >>> mean_std([0.5, 0.7, 0.6])
    (0.6, 0.1)
    """
    if not values:
        raise ValueError("no values")
    mean = math.fsum(values) / len(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return round(mean, 12), round(std, 12)


@dataclass(frozen=True)
class Verdict:
    claim: str
    holds: bool
    gain: tuple[float, float]  # mean ± std over seeds of ``measure``
    detail: str
    measure: str = "A − B"

    def line(self) -> str:
        mark = "reproduced" if self.holds else "NOT reproduced"
        return f"{self.claim}: {mark} — {self.measure} = {self.gain[0]:+.3f} ± {self.gain[1]:.3f} ({self.detail})"


def beats(claim: str, a: list[float], b: list[float], min_gain: float = 0.0, *, strict: bool = False) -> Verdict:
    """Does arm A beat arm B on every seed (paired by position), by ``min_gain`` on average? With
    ``min_gain`` 0 a tie counts ("A ≥ B") unless ``strict`` ("A better than B": every seed above).

    >>> beats("RL raises accuracy", [0.6, 0.55, 0.58], [0.3, 0.31, 0.29], min_gain=0.1).holds
    True
    >>> beats("RL raises accuracy", [0.6, 0.28, 0.58], [0.3, 0.31, 0.29], min_gain=0.1).holds  # seed 2 disagrees
    False
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired seeds needed: {len(a)} vs {len(b)} values")
    diffs = [x - y for x, y in zip(a, b)]
    gain = mean_std(diffs)
    agree = sum(d >= 0 if min_gain == 0 and not strict else d > 0 for d in diffs)
    holds = agree == len(diffs) and gain[0] >= min_gain - 1e-12
    return Verdict(claim, holds, gain, f"{agree} of {len(diffs)} seeds agree; required mean gain {min_gain:g}")


def steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated step whose value reaches ``target`` (None: never on this curve).

    >>> steps_to([(0, 0.3), (40, 0.48), (80, 0.52), (120, 0.49)], 0.5)
    80
    """
    return next((step for step, value in sorted(curve) if value >= target - 1e-12), None)


def sooner(claim: str, a: list[int | None], b: list[int | None], horizon: int) -> Verdict:
    """Does A reach the target in fewer steps than B on every seed? A seed that never reaches it
    counts as ``horizon`` (the last step run: a lower bound, so B's "never" still loses to A's any).

    >>> sooner("cold start", [0, 40, 40], [120, None, 80], horizon=200).line()
    'cold start: reproduced — B − A steps = +106.667 ± 61.101 (3 of 3 seeds: A reaches it first; not reached counts as 200)'
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired seeds needed: {len(a)} vs {len(b)} values")
    first = sum(x is not None and (y is None or x < y) for x, y in zip(a, b))
    diffs = [(horizon if y is None else y) - (horizon if x is None else x) for x, y in zip(a, b)]
    return Verdict(claim, first == len(a), mean_std(diffs),
                   f"{first} of {len(a)} seeds: A reaches it first; not reached counts as {horizon}", "B − A steps")


def cuts(claim: str, a: list[float], b: list[float], min_cut: float) -> Verdict:
    """Does A's rate fall below B's on every seed, by ``min_cut`` of B's on average (1 − A/B)?
    A seed where B is 0 has nothing to cut and fails the claim.

    >>> cuts("language reward", [0.05, 0.10, 0.0], [0.30, 0.25, 0.20], min_cut=0.5).holds
    True
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired seeds needed: {len(a)} vs {len(b)} values")
    shares = [1.0 - x / y if y > 0 else 0.0 for x, y in zip(a, b)]
    lower = sum(x < y for x, y in zip(a, b))
    cut = mean_std(shares)
    return Verdict(claim, lower == len(a) and cut[0] >= min_cut - 1e-12, cut,
                   f"{lower} of {len(a)} seeds lower; required mean cut {min_cut:g}", "1 − A/B")


def costs_at_most(claim: str, a: list[float], b: list[float], max_cost: float) -> Verdict:
    """Is A's mean shortfall against B (B − A) at most ``max_cost``?

    >>> costs_at_most("small accuracy cost", [0.55, 0.50], [0.57, 0.56], max_cost=0.05).line()
    'small accuracy cost: reproduced — B − A = +0.040 ± 0.028 (allowed mean cost 0.05)'
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired seeds needed: {len(a)} vs {len(b)} values")
    cost = mean_std([y - x for x, y in zip(a, b)])
    return Verdict(claim, cost[0] <= max_cost + 1e-12, cost, f"allowed mean cost {max_cost:g}", "B − A")
