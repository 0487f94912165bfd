"""Prompt templates and the output format of the paper.

R1-Zero (paper §2.2.1, Table 1): a plain-text conversation; the model writes
``<think> reasoning </think> <answer> answer </answer>``.

R1 (paper §2.3.1, "readability"): the cold-start format is reasoning, then a summary:
``<think> reasoning </think> summary``. The R1 template pre-fills ``<think>`` as the first
completion token, as DeepSeek's released chat template does; rewards must treat a completion
that starts inside the thinking block as well-formed (see ``r1flow.rewards``).

Boxed (paper §3, evaluation setup, arXiv 2501.12948): the question followed by
"Please reason step by step, and put your final answer within \\boxed{}." — the math directive
DeepSeek-R1's release recommends for evaluation and the one Qwen2.5-Math's evaluation harness
uses. It is for plain chain-of-thought models (a base or instruct model before any RL): they
write no ``<think>`` block, so grading them with the R1 rule (the answer follows ``</think>``)
scores every problem 0; the published pass@1 of such models grades the last ``\\boxed{}``.

Chat: the boxed directive as the user turn of the model's own chat template (an instruct or
R1-distilled checkpoint, as its publishers evaluate it: DeepSeek-R1-Distill's template ends the
prompt at ``<｜Assistant｜>``). Rendering it needs the tokenizer (``render_prompt(..., tokenizer=)``).

Each template has a default answer format (``default_answer_format``): where its completions
put the answer, as ``r1flow.rewards.parsing`` reads it. ``"r1"``: after the first ``</think>``;
``"boxed"``: the whole completion's last ``\\boxed{}``.
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

BOXED_TEMPLATE = "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
"""Plain chain of thought (a ``str.format`` string: ``{{}}`` renders as ``{}``)."""

TEMPLATES = {"r1_zero": R1_ZERO_TEMPLATE, "r1": R1_TEMPLATE, "boxed": BOXED_TEMPLATE, "chat": BOXED_TEMPLATE}

ANSWER_FORMATS = ("r1", "boxed")
"""Where a completion's answer is: after ``</think>`` ("r1") or in its last ``\\boxed{}``."""

_DEFAULT_ANSWER_FORMAT = {"r1_zero": "r1", "r1": "r1", "boxed": "boxed", "chat": "boxed"}


def _known(template: str) -> str:
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known: {sorted(TEMPLATES)}")
    return template


def render_prompt(prompt: str, template: str, tokenizer=None) -> str:
    """Fill ``template`` (a name from TEMPLATES) with a user prompt; ``"chat"`` renders it as the
    user turn of ``tokenizer``'s chat template, ending with the generation prompt.

    >>> render_prompt("Compute 2 + 3.", "boxed")
    'Compute 2 + 3.\\nPlease reason step by step, and put your final answer within \\\\boxed{}.'
    """
    text = TEMPLATES[_known(template)].format(prompt=prompt)
    if template != "chat":
        return text
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'chat' needs a tokenizer with a chat template (this model's has none: "
                         "use 'boxed' or 'r1')")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


STOPS = {"r1_zero": ("</answer>",)}
"""Where a completion ends besides EOS: a base model that closed ``<answer>`` would otherwise go on
writing (another "User:" turn), and the R1-Zero format reward wants nothing after ``</answer>``."""


def stop_strings(template: str) -> tuple[str, ...]:
    """Text that ends a completion of ``template`` (kept in it), besides the model's EOS.

    >>> stop_strings("r1_zero"), stop_strings("r1")
    (('</answer>',), ())
    """
    return STOPS.get(template, ())


def prefills_think(template: str) -> bool:
    """True when the template itself opens ``<think>`` (so completions lack the opening tag)."""
    return TEMPLATES[template].rstrip().endswith("<think>")


def default_answer_format(template: str) -> str:
    """The answer format a template's completions are graded with (one of ANSWER_FORMATS).

    >>> [default_answer_format(t) for t in ("r1_zero", "r1", "boxed")]
    ['r1', 'r1', 'boxed']
    """
    return _DEFAULT_ANSWER_FORMAT[_known(template)]


def r1_zero_completion(reasoning: str, answer: str) -> str:
    """A well-formed R1-Zero completion (the text after the template)."""
    return f" <think> {reasoning} </think> <answer> {answer} </answer>"


def r1_completion(reasoning: str, answer: str) -> str:
    """A well-formed R1 completion in the readable format: reasoning, then a summary.

    The template already opened ``<think>``, so the completion starts with the reasoning.
    """
    return f" {reasoning} </think> The answer is \\boxed{{{answer}}}."
