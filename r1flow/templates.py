"""Prompt templates and the output format of the paper.

R1-Zero (paper §2.2.1, Table 1): a plain-text conversation; the model writes
``<think> reasoning </think> <answer> answer </answer>``.

R1 (paper §2.3.1, "readability"): the cold-start format is reasoning, then a summary:
``<think> reasoning </think> summary``. The R1 template pre-fills ``<think>`` as the first
completion token, as DeepSeek's released chat template does; rewards must treat a completion
that starts inside the thinking block as well-formed (see ``r1flow.rewards``).
"""

from __future__ import annotations

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. User: {prompt}. Assistant:"
)

R1_TEMPLATE = "User: {prompt}\nAssistant: <think>"
"""The R1 template ends by opening the thinking block: completions start inside it."""

TEMPLATES = {"r1_zero": R1_ZERO_TEMPLATE, "r1": R1_TEMPLATE}


def render_prompt(prompt: str, template: str) -> str:
    """Fill ``template`` (a name from TEMPLATES) with a user prompt."""
    try:
        return TEMPLATES[template].format(prompt=prompt)
    except KeyError:
        raise ValueError(f"unknown template {template!r}; known: {sorted(TEMPLATES)}") from None


def prefills_think(template: str) -> bool:
    """True when the template itself opens ``<think>`` (so completions lack the opening tag)."""
    return TEMPLATES[template].rstrip().endswith("<think>")


def r1_zero_completion(reasoning: str, answer: str) -> str:
    """A well-formed R1-Zero completion (the text after the template)."""
    return f" <think> {reasoning} </think> <answer> {answer} </answer>"


def r1_completion(reasoning: str, answer: str) -> str:
    """A well-formed R1 completion in the readable format: reasoning, then a summary.

    The template already opened ``<think>``, so the completion starts with the reasoning.
    """
    return f" {reasoning} </think> The answer is \\boxed{{{answer}}}."
