"""GRPO settings (paper §2.2.1; DAPO's decoupled clip; Dr. GRPO's fixed-length aggregation)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class GRPOParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(100, gt=0, description="rollout batches (each = num_minibatches × mu optimizer steps)")
    prompts_per_step: int = Field(8, gt=0, description="questions per rollout batch")
    group_size: int = Field(8, ge=2, description="G: sampled outputs per question")
    max_new_tokens: int = Field(48, gt=0, description="completion length limit")
    temperature: float = Field(1.0, gt=0, description="rollout sampling temperature (log-probs use it too)")
    top_p: float = Field(1.0, gt=0, le=1, description="rollout nucleus sampling")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate")
    warmup_steps: int = Field(0, ge=0, description="linear warmup, in optimizer steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 disables")
    beta: float = Field(0.0, ge=0, description="k3 KL weight to the frozen reference; 0 loads no reference")
    log_kl: bool = Field(False, description="with beta = 0, still keep the reference to log KL (one no-grad forward)")
    eps_low: float = Field(0.2, ge=0, lt=1, description="lower clip range ε_low")
    eps_high: float = Field(0.2, ge=0, description="upper clip range ε_high (DAPO: 0.28)")
    mu: int = Field(1, ge=1, description="policy iterations per rollout batch (old log-probs kept)")
    num_minibatches: int = Field(1, ge=1, description="optimizer steps per pass over a rollout batch")
    micro_batch_size: int = Field(16, ge=1, description="sequences per forward/backward (memory bound)")
    gradient_checkpointing: bool = Field(False, description="recompute each decoder layer's activations in "
                                         "backward (r1flow.train.memory): far less memory, ~1/3 more compute")
    loss_agg: Literal["sequence_mean", "token_mean", "fixed_length"] = Field(
        "sequence_mean", description="per-token loss aggregation (see r1flow.grpo.loss)")
    adv_scale: Literal["group", "batch", "none"] = Field(
        "group", description="advantage std normalization; 'none' is Dr. GRPO")
    filter_zero_variance: bool = Field(False, description="drop groups whose rewards are all equal (DAPO)")
    reward_timeout_s: float = Field(5.0, gt=0, description="per-sample reward timeout; overruns score 0")
    max_train_flops: float = Field(0.0, ge=0, description="stop once this many training FLOPs are spent "
                                   "(r1flow.flops; 0: run all steps) — compute-matched comparisons")
    seed: int = Field(0, description="seeds prompts order, sampling and torch")
    log_every: int = Field(1, ge=1, description="rollout batches between metric reports")
    sample_every: int = Field(25, ge=1, description="rollout batches between logged sample tables")

    def budget_spent(self, train_flops: float) -> bool:
        """Has a run that spent ``train_flops`` reached ``max_train_flops`` (never, without a budget)?"""
        return bool(self.max_train_flops) and train_flops >= self.max_train_flops

    @model_validator(mode="after")
    def _minibatches_divide(self) -> GRPOParams:
        rows = self.prompts_per_step * self.group_size
        if rows % self.num_minibatches:
            raise ValueError(f"num_minibatches ({self.num_minibatches}) must divide "
                             f"prompts_per_step × group_size ({rows})")
        return self
