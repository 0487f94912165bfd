"""Rule-based rewards of DeepSeek-R1 (paper §2.2.2 accuracy and format, §2.3.2 language).

Every reward has one signature, as in TRL and open-r1: a batch in, a list out,
``fn(completions: list[str], golds: list[str], **kwargs) -> list[float]``; parameters are bound
by small factories and rewards are looked up by name with ``get_reward``:

    accuracy = get_reward("accuracy", timeout_s=5.0)     # math-verify, per-item deadline
    fmt = get_reward("format", template="r1")            # <think> pre-filled by the template
    lang = get_reward("language", template="r1", lang="en")

Each returned function has a ``__name__`` equal to its registry name (trainers log by it).
The accuracy reward's list also carries ``n_timeouts``: items that overran their deadline.
Modules: ``parsing`` (split a completion, extract answers), ``correctness`` (accuracy),
``formatting``, ``language``, ``pool`` (grading processes with deadlines), ``worker`` (their
entry point).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol

from r1flow.rewards.correctness import AccuracyReward, BatchScores, accuracy, quick_accuracy
from r1flow.rewards.formatting import format_reward, is_well_formed
from r1flow.rewards.language import check_lang, language_consistency, language_reward, mixes_languages
from r1flow.rewards.parsing import check_template, extract_answer, gold_answer, split_completion
from r1flow.rewards.pool import Graded, GradingPool, default_pool, score_with_timeout

__all__ = [
    "REWARDS",
    "AccuracyReward",
    "BatchScores",
    "Graded",
    "GradingPool",
    "RewardFn",
    "accuracy",
    "accuracy_reward",
    "default_pool",
    "extract_answer",
    "format_reward",
    "get_reward",
    "gold_answer",
    "is_well_formed",
    "language_consistency",
    "language_reward",
    "make_format_reward",
    "make_language_reward",
    "mixes_languages",
    "quick_accuracy",
    "score_with_timeout",
    "split_completion",
]


class RewardFn(Protocol):
    """A batch reward: one score per completion."""

    __name__: str

    def __call__(
        self, completions: Sequence[str], golds: Sequence[str], **kwargs: object
    ) -> list[float]: ...


def _named(fn: Callable[..., list[float]], name: str) -> RewardFn:
    fn.__name__ = fn.__qualname__ = name  # type: ignore[attr-defined]
    return fn  # type: ignore[return-value]


def accuracy_reward(
    timeout_s: float = 5.0, pool: GradingPool | None = None, answer_format: str = "r1"
) -> RewardFn:
    """Accuracy with a per-item deadline of ``timeout_s`` seconds, answers read in
    ``answer_format`` ("r1" or "boxed"; see ``AccuracyReward``)."""
    return AccuracyReward(timeout_s=timeout_s, pool=pool, answer_format=answer_format)


def make_format_reward(template: str = "r1_zero") -> RewardFn:
    """``format_reward`` for completions of ``template``."""
    bound = functools.partial(format_reward, template=check_template(template))
    return _named(functools.update_wrapper(bound, format_reward), "format")


def make_language_reward(template: str = "r1", lang: str = "en") -> RewardFn:
    """``language_reward``: share of ``lang`` words in the reasoning of ``template`` completions."""
    bound = functools.partial(
        language_reward, template=check_template(template), lang=check_lang(lang)
    )
    return _named(functools.update_wrapper(bound, language_reward), "language")


REWARDS: dict[str, Callable[..., RewardFn]] = {
    "accuracy": accuracy_reward,
    "format": make_format_reward,
    "language": make_language_reward,
}


def get_reward(name: str, **params: object) -> RewardFn:
    """The reward registered as ``name``, with ``params`` bound by its factory."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known: {sorted(REWARDS)}")
    try:
        return REWARDS[name](**params)
    except TypeError as error:
        raise ValueError(f"bad parameters for reward {name!r}: {error}") from None
