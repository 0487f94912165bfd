"""Per-example keep/drop predicates for cold-start curation and rejection sampling.

Paper §2.3.1 keeps readable cold-start data; §2.3.3 keeps only correct rejection samples and
drops "chain-of-thought with mixed languages, long paragraphs, and code blocks". Each rule is a
small pure predicate over one example (a mapping with ``question``, ``answer`` (gold),
``completion``, ``template`` and, for sampled outputs, ``finish_reason``) that returns True to
keep it. Rules with parameters are factories that return such a predicate. ``apply_filters``
runs named predicates in order and counts how many each one removed, so a stage can log why
its dataset shrank. Correctness, format and language use the reward functions GRPO trains on
(``r1flow.rewards``), so "kept" means exactly what the rewards call good.

Correctness is graded the way the accuracy reward is, under a per-answer deadline in the grading
pool (``CorrectAnswer``), never in-process: one sampled ``\\boxed{9^{9^{9^{9}}}}`` keeps sympy busy
for ever, holding the GIL, so an in-process check would hang the whole stage. An answer that
overruns counts as incorrect and is counted. A filter may grade a whole list at once
(``batch(examples) -> list[bool]``), so the pool's workers grade in parallel.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from r1flow import rewards
from r1flow.rewards import AccuracyReward, GradingPool

Example = Mapping[str, Any]
Predicate = Callable[[Example], bool]

TRUNCATED = "length"
"""``finish_reason`` of an output cut off at the token limit (the vLLM/OpenAI convention)."""

_CODE_FENCE = re.compile(r"```|^[ \t]*~~~", re.MULTILINE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def reasoning_text(example: Example) -> str:
    """The chain of thought of an example's completion, or the whole completion if it has none."""
    reasoning, _ = rewards.split_completion(example["completion"], example["template"])
    return (reasoning if reasoning is not None else example["completion"]).strip()


class CorrectAnswer:
    """Keep when the final answer matches the gold (the accuracy reward is 1).

    Graded by ``AccuracyReward``: integers in-process, anything else in ``pool`` (the process-wide
    one when None) with ``timeout_s`` seconds per answer; an overrun is wrong and adds to
    ``timeouts``. ``answer_format`` ("r1" or "boxed") says where the answer is read.
    """

    def __init__(
        self, timeout_s: float = 5.0, answer_format: str = "r1", pool: GradingPool | None = None
    ) -> None:
        self.reward = AccuracyReward(timeout_s=timeout_s, pool=pool, answer_format=answer_format)

    @property
    def timeouts(self) -> int:
        """Answers that overran their deadline, over every call so far."""
        return self.reward.total_timeouts

    def batch(self, examples: Sequence[Example]) -> list[bool]:
        if not examples:
            return []
        scores = self.reward([e["completion"] for e in examples], [e["answer"] for e in examples])
        return [score >= 1.0 for score in scores]

    def __call__(self, example: Example) -> bool:
        return self.batch([example])[0]


is_correct = CorrectAnswer()
"""The default correctness check: 5 s per answer, "r1" answers, the process-wide grading pool."""


def is_well_formed(example: Example) -> bool:
    """The completion has the template's full output format (the format reward is 1)."""
    return rewards.format_reward([example["completion"]], template=example["template"])[0] >= 1.0


def is_single_language(language: str = "en", threshold: float = 0.95) -> Predicate:
    """Keep when at least ``threshold`` of the chain of thought is in ``language``."""

    def keep(example: Example) -> bool:
        return rewards.language_consistency(reasoning_text(example), language) >= threshold

    return keep


def within_length(min_len: int = 0, max_len: int | None = None, count: Callable[[str], int] = len) -> Predicate:
    """Keep when the chain of thought measures within [min_len, max_len].

    ``count`` measures the text: ``len`` for characters, or e.g.
    ``lambda s: len(tokenizer.encode(s))`` for tokens.
    """

    def keep(example: Example) -> bool:
        size = count(reasoning_text(example))
        return size >= min_len and (max_len is None or size <= max_len)

    return keep


def no_code_blocks(example: Example) -> bool:
    """Drop completions with a fenced code block (``` anywhere, or a line opening with ~~~)."""
    return _CODE_FENCE.search(example["completion"]) is None


def no_long_paragraphs(max_chars: int) -> Predicate:
    """Drop completions with a paragraph (text between blank lines) over ``max_chars`` characters."""

    def keep(example: Example) -> bool:
        return all(len(p.strip()) <= max_chars for p in _PARAGRAPH_BREAK.split(example["completion"]))

    return keep


def not_truncated(example: Example) -> bool:
    """Drop outputs that stopped at the token limit instead of ending on their own."""
    return example["finish_reason"] != TRUNCATED


def apply_filters(
    examples: Iterable[Example], filters: Sequence[tuple[str, Predicate]]
) -> tuple[list[Example], dict[str, int]]:
    """Run named predicates in order; return the kept examples and how many each one removed.

    An example removed by one filter is not seen by the later ones, so the counts add up:
    ``len(examples) == len(kept) + sum(counts.values())``. Each filter sees the survivors of the
    ones before it as one list (``batch`` when the predicate has it), in input order.
    """
    names = [name for name, _ in filters]
    if len(set(names)) != len(names):
        raise ValueError(f"filter names must be unique, got {names}")
    counts = dict.fromkeys(names, 0)
    kept = list(examples)
    for name, keep in filters:
        verdicts = keep.batch(kept) if hasattr(keep, "batch") else [keep(e) for e in kept]
        survivors = [example for example, ok in zip(kept, verdicts, strict=True) if ok]
        counts[name] = len(kept) - len(survivors)
        kept = survivors
    return kept, counts
