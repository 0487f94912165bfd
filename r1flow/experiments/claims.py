"""A claim of the paper checked over seeds: mean ± sample standard deviation of each arm, and a
verdict that says plainly when the tiny scale does not reproduce it.

A claim "A beats B" holds when the mean difference over paired seeds is at least ``min_gain`` and
the per-seed differences all point the same way (with 3 seeds there is no honest significance
test; agreement of every seed is the bar). "A ≥ B" claims (cons@k ≥ pass@1) use ``min_gain`` 0.
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
    gain: tuple[float, float]  # mean ± std of the per-seed differences A − B
    detail: str

    def line(self) -> str:
        mark = "reproduced" if self.holds else "NOT reproduced"
        return f"{self.claim}: {mark} — A − B = {self.gain[0]:+.3f} ± {self.gain[1]:.3f} ({self.detail})"


def beats(claim: str, a: list[float], b: list[float], min_gain: float = 0.0) -> Verdict:
    """Does arm A beat arm B on every seed (paired by position), by ``min_gain`` on average?

    >>> beats("RL raises accuracy", [0.6, 0.55, 0.58], [0.3, 0.31, 0.29], min_gain=0.1).holds
    True
    >>> beats("RL raises accuracy", [0.6, 0.28, 0.58], [0.3, 0.31, 0.29], min_gain=0.1).holds  # seed 2 disagrees
    False
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired seeds needed: {len(a)} vs {len(b)} values")
    diffs = [x - y for x, y in zip(a, b)]
    gain = mean_std(diffs)
    agree = sum(d >= 0 if min_gain == 0 else d > 0 for d in diffs)
    holds = agree == len(diffs) and gain[0] >= min_gain - 1e-12
    return Verdict(claim, holds, gain, f"{agree} of {len(diffs)} seeds agree; required mean gain {min_gain:g}")
