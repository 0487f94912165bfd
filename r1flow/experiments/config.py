"""What the paper-findings experiment decides before it runs (issue 7): seeds, the threshold of
each claim, and what "comparable compute" means. Fixed in ``configs/experiments/findings.yaml``;
changing one after seeing results would be reading the dice twice."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from r1flow.config import ConfigError

DEFAULT = Path(__file__).resolve().parent.parent.parent / "configs" / "experiments" / "findings.yaml"


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r1_zero_gain: float = Field(0.05, ge=0, description="1. held-out pass@1 gain of RL over the base")
    cons_over_pass: float = Field(0.0, ge=0, description="2. cons@k − pass@1 (the claim is ≥)")
    cold_start_target: float = Field(0.5, gt=0, le=1, description="3. held-out pass@1 both arms try to reach")
    language_mixing_cut: float = Field(0.5, gt=0, le=1, description="4. relative cut of the mixed-language rate")
    language_max_cost: float = Field(0.05, ge=0, description="4. largest pass@1 cost of the language reward")
    distill_gain: float = Field(0.02, ge=0, description="5. pass@1 of distillation over RL, same student")


class FindingsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, description="each arm, each seed")
    preset: str = Field("tiny", description="the pipeline preset the arms start from")
    quick_preset: str = Field("micro", description="--quick: CI-size check of the flow, not of the claims")
    mixed_language: float = Field(0.3, ge=0, le=1, description="share of the base corpus's worked chains "
                                  "that code-switch English/Chinese (claim 4 needs a second language to mix)")
    compute_tolerance: float = Field(0.10, gt=0, lt=1, description="student training FLOPs of distillation and "
                                     "RL within this relative distance (r1flow.flops)")
    thresholds: Thresholds = Field(default_factory=Thresholds)


def load_findings(path: str | Path = DEFAULT) -> FindingsConfig:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return FindingsConfig.model_validate(data)
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"experiment config {path}: {exc}") from None
