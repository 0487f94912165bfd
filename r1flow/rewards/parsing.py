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

Answer formats (``r1flow.templates.ANSWER_FORMATS``). The order above is the ``"r1"`` format,
for R1-format policies. A plain chain-of-thought model (a base or instruct model before RL,
prompted with the ``"boxed"`` template) writes no ``</think>``, so under ``"r1"`` it scores 0
on every problem. The paper's evaluation (§3, evaluation setup, arXiv 2501.12948) reports
pass@1 of R1 next to such models (Qwen2.5-Math, the distillation bases); their published
numbers grade the final ``\\boxed{}``, so a base's pass@1 is comparable only when graded the
same way. The ``"boxed"`` format (``boxed_answer``) follows Qwen2.5-Math's and DeepSeek-Math's
evaluation harnesses: the whole completion's LAST complete ``\\boxed{…}`` (balanced braces; a
box left unclosed, e.g. cut by the token budget, is skipped, as DeepSeek-Math's
``extract_boxed_answers`` does). A completion that writes no ``\\boxed`` at all falls back to
its last number: both harnesses do (Qwen2.5-Math ``evaluation/parser.py``
``extract_answer(use_last_number=True)``, DeepSeek-Math ``answer_extraction.py``
``extract_answer``), after a "the answer is …" phrase that this module does not look for (the
last number stands in for it); like them, a completion with only unclosed or empty boxes has no
answer. ``"auto"`` (``resolve_answer_format``) is the template's default format.
"""

from __future__ import annotations

import re

from r1flow.templates import ANSWER_FORMATS, TEMPLATES, default_answer_format, prefills_think

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.S)
# A number: optional minus (not the minus of "8-3"), thousands groups or plain digits, decimals.
_NUMBER = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_BRACE = re.compile(r"[{}]")
_BOXED = "\\boxed"
_MATH_WRAPPER = re.compile(r"\$\$(.*)\$\$|\$([^$]*)\$|\\\((.*)\\\)|\\\[(.*)\\\]", re.S)


def check_template(template: str) -> str:
    """Return ``template`` if it names a known template, else raise ``ValueError``."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known: {sorted(TEMPLATES)}")
    return template


def check_answer_format(answer_format: str) -> str:
    """Return ``answer_format`` if it is one of ANSWER_FORMATS, else raise ``ValueError``."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer format {answer_format!r}; known: {list(ANSWER_FORMATS)}")
    return answer_format


def resolve_answer_format(answer_format: str, template: str) -> str:
    """``answer_format``, or ``template``'s default one when it is ``"auto"``.

    >>> resolve_answer_format("auto", "boxed"), resolve_answer_format("boxed", "r1")
    ('boxed', 'boxed')
    """
    if answer_format == "auto":
        return default_answer_format(check_template(template))
    return check_answer_format(answer_format)


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


def boxed_answer(completion: str) -> str | None:
    """The ``"boxed"`` answer of a completion: the content of its last complete ``\\boxed{}``;
    with no ``\\boxed`` at all, its last number; cleaned (``clean_answer``). None otherwise.

    >>> boxed_answer("so x = \\\\boxed{\\\\frac{1}{2}}, not \\\\boxed{3")  # the last one is unclosed
    '\\\\frac{1}{2}'
    >>> boxed_answer("She pays 1,234 dollars."), boxed_answer("so it is \\\\boxed{12")  # cut short
    ('1234', None)
    """
    boxed = last_boxed(completion)
    answer = last_number(completion) if boxed is None and _BOXED not in completion else boxed
    if answer is None:
        return None
    return clean_answer(answer) or None


def extract_answer(completion: str, template: str = "r1_zero", answer_format: str = "r1") -> str | None:
    """The final answer of a completion in ``answer_format`` (``"auto"``: ``template``'s), or
    None. ``"r1"``: after the first ``</think>`` (None when the thinking never closes);
    ``"boxed"``: ``boxed_answer``.

    >>> extract_answer("2 + 3 = 5, so \\\\boxed{5}.", "boxed", "auto"), extract_answer("\\\\boxed{5}")
    ('5', None)
    """
    if resolve_answer_format(answer_format, check_template(template)) == "boxed":
        return boxed_answer(completion)
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
