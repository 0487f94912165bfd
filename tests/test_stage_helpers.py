"""Small pure helpers of the stages: prompt-source mixing and the paired evaluation gain."""

from __future__ import annotations

import math

import pytest

from r1flow.stages.common import paired_gain
from r1flow.stages.rl import mix_sources


def test_mix_sources_gives_each_source_its_weight():
    # weights 1 : 0.5 over 3 and 2 prompts: length = max(ceil(3*1.5/1), ceil(2*1.5/0.5)) = 6,
    # so 4 draws of the first source (2/3) and 2 of the second (1/3)
    mixed = mix_sources([["a1", "a2", "a3"], ["b1", "b2"]], [1.0, 0.5])
    assert mixed == ["a1", "a2", "a3", "a1", "b1", "b2"]


def test_paired_gain_and_its_standard_error():
    before = {"p1": (0.0, 0.0), "p2": (0.5, 0.5), "p3": (0.25, 1.0)}
    after = {"p1": (0.5, 0.5), "p2": (1.0, 1.0), "p3": (0.25, 0.5)}
    # strict diffs 0.5, 0.5, 0: mean 1/3; sample var = ((1/6)^2*2 + (1/3)^2)/2 = 1/12; se = sqrt(1/36)
    gain, se = paired_gain(before, after)
    assert gain == pytest.approx(1 / 3) and se == pytest.approx(math.sqrt(1 / 36))
    assert paired_gain(before, after, which=1)[0] == pytest.approx(1 / 6)  # lenient: 0.5, 0.5, -0.5
