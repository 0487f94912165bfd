"""Scoring one rollout batch with several weighted rewards (paper §2.2.2: accuracy + format, §2.3.2:
+ language consistency, §2.3.4: + reward models).

The trainer sees every reward as ``(name, weight, fn)`` with one batch signature,
``fn(prompts, completions, golds)``, one entry per rollout row. Rule rewards take
``(completions, golds, **kw)`` (``r1flow.rewards``); ``completion_reward`` adapts them, so a
model-based reward that also needs the prompt fits the same list. The total reward is the
weighted sum. A reward returns a list of floats; when that list carries ``n_timeouts`` (the
accuracy reward's ``BatchScores``) or it is the grading pool's ``Graded`` (``scores``,
``n_timeouts``), the timed-out items (scored 0) are counted for the logs.

Rows are told apart by key, not by prompt text: the same question in two prompt sources renders to
the same prompt but has its own rewards and gold (§2.3.4). ``train_grpo`` passes each rollout row's
prompt-row ``"key"`` as ``keys``, and a reward marked ``keyed`` gets them as ``keys=``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from r1flow.rewards import get_reward

BatchReward = Callable[[list[str], list[str], list[str]], Any]
RewardSpec = tuple[str, float, BatchReward]


def completion_reward(fn: Callable[..., Any], **kw: Any) -> BatchReward:
    """Adapt ``fn(completions, golds, **kw)`` to the trainer's ``fn(prompts, completions, golds)``.

    >>> count_a = completion_reward(lambda cs, gs: [c.count("a") for c in cs])
    >>> count_a(["q"], ["banana"], [""])
    [3]
    """

    def batch(prompts: list[str], completions: list[str], golds: list[str]) -> Any:
        return fn(completions, golds, **kw)

    batch.__name__ = getattr(fn, "__name__", "reward")
    return batch


def rule_reward(name: str, weight: float = 1.0, **params: Any) -> RewardSpec:
    """A registered rule reward (``r1flow.rewards.get_reward``) as a trainer entry.

    >>> name, weight, fn = rule_reward("format", 0.5, template="r1_zero")
    >>> fn(["q"], [" <think> 1 </think> <answer> 1 </answer>"], ["1"])
    [1.0]
    """
    return name, weight, completion_reward(get_reward(name, **params))


def keyed(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``fn`` as routing rows by key: ``score_batch`` calls ``fn(prompts, completions, golds,
    keys=keys)``, one key per row (its prompt row's ``"key"``)."""
    fn.uses_keys = True  # type: ignore[attr-defined]
    return fn


def _call(name: str, fn: BatchReward, prompts: list[str], completions: list[str], golds: list[str],
          keys: list[str] | None) -> Any:
    if not getattr(fn, "uses_keys", False):
        return fn(prompts, completions, golds)
    if keys is None:
        raise ValueError(f"reward {name!r} routes rows by key, but no keys were given "
                         "(each prompt row needs a 'key')")
    return fn(prompts, completions, golds, keys=keys)


@dataclass
class RewardScores:
    """Scores of one rollout batch: the weighted total, each reward apart, timeouts."""

    total: Tensor  # [N]
    per_reward: dict[str, Tensor]  # name -> [N], unweighted
    timeouts: int


def score_batch(specs: Sequence[RewardSpec], prompts: list[str], completions: list[str],
                golds: list[str], keys: list[str] | None = None) -> RewardScores:
    """Run every reward on the batch and sum them with their weights (``keys``: each row's prompt
    row key, for ``keyed`` rewards)."""
    if not specs:
        raise ValueError("GRPO needs at least one reward function")
    n = len(completions)
    if len(prompts) != n or len(golds) != n or (keys is not None and len(keys) != n):
        raise ValueError(f"{len(prompts)} prompts, {n} completions, {len(golds)} golds and "
                         f"{'no' if keys is None else len(keys)} keys")
    total = torch.zeros(n, dtype=torch.float32)
    per_reward: dict[str, Tensor] = {}
    timeouts = 0
    for name, weight, fn in specs:
        if name in per_reward:
            raise ValueError(f"reward {name!r} is listed twice")
        out = _call(name, fn, prompts, completions, golds, keys)
        scores = list(getattr(out, "scores", out))
        timeouts += int(getattr(out, "n_timeouts", 0))
        if len(scores) != n or any(math.isinf(float(s)) for s in scores):
            raise ValueError(f"reward {name!r} must return {n} finite floats or NaN, got {scores[:8]}...")
        values = torch.tensor([float(s) for s in scores], dtype=torch.float32)  # [N], NaN = not applied
        per_reward[name] = values
        total += weight * values.nan_to_num(0.0)
    return RewardScores(total=total, per_reward=per_reward, timeouts=timeouts)


def reward_metrics(scores: RewardScores) -> dict[str, float]:
    """``reward/mean``, ``reward/std`` and ``reward/<name>/mean|std`` (unbiased std, 0 for one row)."""

    def std(x: Tensor) -> float:
        return float(x.std()) if x.numel() > 1 else 0.0

    metrics = {"reward/mean": float(scores.total.mean()), "reward/std": std(scores.total)}
    for name, values in scores.per_reward.items():
        applied = values[~values.isnan()]  # a reward of one prompt source is NaN on the others
        if applied.numel():
            metrics[f"reward/{name}/mean"] = float(applied.mean())
            metrics[f"reward/{name}/std"] = std(applied)
    metrics["reward_timeouts"] = float(scores.timeouts)
    return metrics
