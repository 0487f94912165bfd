"""Format reward (paper §2.2.2): did the model put its thinking between the tags?

Well-formed means: the thinking block is opened exactly once, counting a ``<think>`` that the
template pre-fills (R1 template: the completion starts inside the block and must not open it
again; other templates: the completion starts with ``<think>``), closed by exactly one
``</think>``, holds some reasoning, and is followed by the answer — ``<answer>…</answer>`` and
nothing else for templates that ask for it (R1-Zero), a non-empty summary otherwise (R1).
Ignoring the pre-fill is how a format reward gets stuck at 0 for every R1-template completion.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from r1flow.rewards.parsing import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    check_template,
    uses_answer_tags,
)
from r1flow.templates import prefills_think

_ANSWER_ONLY = re.compile(r"\s*<answer>(.*?)</answer>\s*", re.S)


def is_well_formed(completion: str, template: str) -> bool:
    """True when ``completion`` (the text after ``template``'s prompt) has the paper's format."""
    body = completion.strip()
    if prefills_think(check_template(template)):
        if THINK_OPEN in body:
            return False
    elif body.startswith(THINK_OPEN) and body.count(THINK_OPEN) == 1:
        body = body[len(THINK_OPEN) :]
    else:
        return False
    if body.count(THINK_CLOSE) != 1:
        return False
    reasoning, _, final = body.partition(THINK_CLOSE)
    if not reasoning.strip():
        return False
    if not uses_answer_tags(template):
        return bool(final.strip())
    tags_once = body.count(ANSWER_OPEN) == 1 and body.count(ANSWER_CLOSE) == 1
    answer = _ANSWER_ONLY.fullmatch(final)
    return tags_once and answer is not None and bool(answer.group(1).strip())


def format_reward(
    completions: Sequence[str],
    golds: Sequence[str] | None = None,
    *,
    template: str = "r1_zero",
    **kwargs: object,
) -> list[float]:
    """1.0 for each well-formed completion, else 0.0 (golds are not used).

    >>> format_reward([" <think> 2 + 3 = 5 </think> <answer> 5 </answer>"])
    [1.0]
    >>> format_reward([" <think> 2 + 3 = 5 </think> 5"])  # R1-Zero asks for <answer> tags
    [0.0]
    >>> format_reward([" 2 + 3 = 5 </think> The answer is 5."], template="r1")  # <think> pre-filled
    [1.0]
    >>> format_reward([" <think> 2 + 3 = 5 </think> The answer is 5."], template="r1")  # twice
    [0.0]
    >>> format_reward([" <think> 2 + 3 = 5 </think> </think> <answer> 5 </answer>"])
    [0.0]
    """
    return [float(is_well_formed(completion, template)) for completion in completions]
