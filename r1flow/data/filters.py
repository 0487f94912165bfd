"""Per-example keep/drop predicates for cold-start curation and rejection sampling.

Paper §2.3.1 keeps readable cold-start data; §2.3.3 keeps only correct rejection samples and
drops "chain-of-thought with mixed languages, long paragraphs, and code blocks". Each rule is a
small pure predicate over one example (a mapping with ``question``, ``answer`` (gold),
``completion``, ``template`` and, for sampled outputs, ``finish_reason``) that returns True to
keep it. Rules with parameters are factories that return such a predicate. ``apply_filters``
runs named predicates in order and counts how many each one removed, so a stage can log why
its dataset shrank. Correctness, format and language use the reward functions GRPO trains on
(``r1flow.rewards``), so "kept" means exactly what the rewards call good.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from r1flow import rewards

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


def is_correct(example: Example) -> bool:
    """The final answer matches the gold answer (the accuracy reward is 1)."""
    return rewards.accuracy(example["completion"], example["answer"]) >= 1.0


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
    ``len(examples) == len(kept) + sum(counts.values())``.
    """
    names = [name for name, _ in filters]
    if len(set(names)) != len(names):
        raise ValueError(f"filter names must be unique, got {names}")
    counts = dict.fromkeys(names, 0)
    kept = []
    for example in examples:
        failed = next((name for name, keep in filters if not keep(example)), None)
        if failed is None:
            kept.append(example)
        else:
            counts[failed] += 1
    return kept, counts
