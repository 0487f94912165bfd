"""Where the reasoning ends and the answer is: the splitting every rule reward shares.

The paper's outputs are ``<think> reasoning </think>`` followed by ``<answer> … </answer>``
(R1-Zero, §2.2.1) or by a readable summary (R1, §2.3.1). Rewards grade only the part after the
FIRST ``</think>`` (text the model wrote while still thinking never counts), and a completion
whose thinking never closes has no final part at all. The R1 template pre-fills ``<think>``, so
its completions start inside the thinking block (``r1flow.templates.prefills_think``).

Answer extraction, in order: the last ``<answer>…</answer>`` block of the final part (an
unclosed one runs to the end), and inside it the last ``\\boxed{}`` if it has one; otherwise
the last ``\\boxed{}`` of the final part; otherwise the last number there. Golds come as
GSM8K solutions (``… #### 2,125``), MATH solutions or answers (LaTeX), AIME integers (``025``)
or plain numbers; ``clean_answer`` brings a gold and a prediction to the same bare form.
"""

from __future__ import annotations

import re

from r1flow.templates import TEMPLATES, prefills_think

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.S)
# A number: optional minus (not the minus of "8-3"), thousands groups or plain digits, decimals.
_NUMBER = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_BRACE = re.compile(r"[{}]")
_MATH_WRAPPER = re.compile(r"\$\$(.*)\$\$|\$([^$]*)\$|\\\((.*)\\\)|\\\[(.*)\\\]", re.S)


def check_template(template: str) -> str:
    """Return ``template`` if it names a known template, else raise ``ValueError``."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known: {sorted(TEMPLATES)}")
    return template


def uses_answer_tags(template: str) -> bool:
    """True when the template asks for ``<answer>…</answer>`` after the thinking (R1-Zero)."""
    return ANSWER_OPEN in TEMPLATES[check_template(template)]


def final_part(completion: str) -> str | None:
    """The text after the first ``</think>``; None when the thinking never closes."""
    _, closed, after = completion.partition(THINK_CLOSE)
    return after.strip() if closed else None


def split_completion(completion: str, template: str) -> tuple[str | None, str | None]:
    """Split a completion into (reasoning, final part).

    reasoning: the text before the first ``</think>`` (all of it when the thinking never
    closes), after the opening ``<think>``. With a template that pre-fills ``<think>`` the
    completion starts inside the block (a repeated leading ``<think>`` is dropped); otherwise
    reasoning is None when the completion never opens ``<think>``.
    final part: see ``final_part``.
    """
    before = completion.partition(THINK_CLOSE)[0]
    if prefills_think(check_template(template)):
        stripped = before.lstrip()
        reasoning = stripped[len(THINK_OPEN):] if stripped.startswith(THINK_OPEN) else before
    else:
        _, opened, reasoning = before.partition(THINK_OPEN)
        if not opened:
            return None, final_part(completion)
    return reasoning.strip(), final_part(completion)


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{…}`` (balanced braces), or None. One pass."""
    opens: list[int] = []  # positions of unclosed "{"
    best: tuple[int, int] | None = None
    for brace in _BRACE.finditer(text):
        i = brace.start()
        if brace.group() == "{":
            opens.append(i)
        elif opens:
            start = opens.pop()
            if text.endswith("\\boxed", 0, start) and (best is None or start > best[0]):
                best = (start, i)
    return None if best is None else text[best[0] + 1 : best[1]]


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (``-3``, ``2,125``, ``0.5``), or None."""
    found = None
    for found in _NUMBER.finditer(text):
        pass
    return found.group(0) if found else None


def answer_from_final(final: str) -> str | None:
    """The answer written in a final part (see the module docstring for the order)."""
    blocks = _ANSWER_BLOCK.findall(final)
    if blocks:
        block = blocks[-1]
        boxed = last_boxed(block)
        answer = boxed if boxed is not None else block
    else:
        boxed = last_boxed(final)
        answer = boxed if boxed is not None else last_number(final)
    if answer is None:
        return None
    answer = clean_answer(answer)
    return answer or None


def extract_answer(completion: str, template: str = "r1_zero") -> str | None:
    """The final answer of a completion, or None (thinking never closed, or no answer)."""
    check_template(template)
    final = final_part(completion)
    return None if final is None else answer_from_final(final)


def clean_answer(answer: str) -> str:
    """Bare form of an answer: no trailing period, no ``$…$``/``\\(…\\)``/``\\[…\\]``
    wrapper or leading currency ``$``, no thousands separators (``2,125`` -> ``2125``)."""
    answer = answer.strip().rstrip(".").strip()
    wrapped = _MATH_WRAPPER.fullmatch(answer)
    if wrapped:
        inner = next(group for group in wrapped.groups() if group is not None)
        answer = inner.strip().rstrip(".").strip()
    elif answer.startswith("$") and "$" not in answer[1:]:
        answer = answer[1:].strip()
    if _THOUSANDS.fullmatch(answer):
        answer = answer.replace(",", "")
    return answer


def gold_answer(gold: str) -> str:
    """The final answer inside a gold: after GSM8K's last ``####``, else the last
    ``\\boxed{}`` of a MATH solution, else the gold itself; then ``clean_answer``."""
    if "####" in gold:
        gold = gold.rsplit("####", 1)[1]
    else:
        boxed = last_boxed(gold)
        gold = boxed if boxed is not None else gold
    return clean_answer(gold)
