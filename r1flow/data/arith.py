"""The synthetic verifiable task of the CPU presets: multi-step integer addition and subtraction.

Why this task: the paper's R1-Zero (§2.2) needs a base model that can already *sometimes* solve
problems whose answers a rule can check; reinforcement learning then raises how often. At laptop
scale that means (ENVIRONMENT.md, "R1-Zero at tiny scale") a base that can almost do the task and
whose pass@k is far above its pass@1, with short completions so GRPO runs many steps a minute.

- Problems: ``Compute 7 + 5 - 3 + 8`` (single-digit operands, 3-4 terms by default) with running
  totals that never go negative, so each step is one small fact; the answer is an integer string.
  Larger operands (the feasibility run's 30) left a 1M model too weak after 150 s of pretraining.
- Worked steps are English words (``7 plus 5 is 12. 12 minus 3 is 9.``): the language-consistency
  reward (paper §2.3.2) counts Latin words. Completions are short (about 20-45 tokens). With
  ``CorpusMix.mixed_language`` a share of the worked chains code-switch, each step in English or
  Chinese words (``7 plus 5 是 12 减 3 是 9.``), as bilingual web text does: the base then mixes
  languages in its own CoT, which the language reward is there to cure (the findings' claim 4).
- The pretraining corpus is deliberately imperfect (``CorpusMix``), in forms chosen so that every
  bad habit is a *decision* the model makes, never a false fact it has to learn:
  ``clean`` (tagged worked steps), ``slip`` (one step misreads the question: a flipped operator
  or an operand off by one, computed right, carried to the answer), ``guess`` (tagged, reasoning
  "I know this one.", an answer up to ``GUESS_SPREAD`` off), ``bare`` (no tags, "The answer is X"
  with such a guess), ``untagged`` (right working, no tags), and a share of clean documents in the
  R1 template. The base learns the skill from the worked forms but samples guesses about half the
  time: pass@1 is low while the worked path stays in its distribution (pass@k far above pass@1),
  which GRPO can select for. Abandoning the guess also lengthens responses, as R1-Zero's do
  (paper Figure 3). Noisy guesses (not right ones) keep the model from learning to compute the
  answer without working; arithmetic errors in the corpus (tried first) slowed learning the skill.
- A fixed held-out set (``assets/heldout_arith.jsonl``, sha256 ``HELDOUT_SHA256``) measures every
  model; every training generator here excludes its problems by canonical expression.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, ConfigDict, Field, model_validator

from r1flow.templates import r1_completion, r1_zero_completion, render_prompt

HELDOUT_PATH = Path(__file__).resolve().parent.parent / "assets" / "heldout_arith.jsonl"
HELDOUT_SHA256 = "1dad1d597ad604f0333f9c58385135fe7b7abab03ad04b0f5c64fd90387cb67e"
HELDOUT_SEED = 20250122
HELDOUT_SIZE = 500
GUESS_REASONING = "I know this one."
"""The whole "reasoning" of a guessed answer: well-formed, but no working."""
GUESS_SPREAD = 8
"""A guessed answer is the right one plus a uniform offset in [-GUESS_SPREAD, GUESS_SPREAD]."""
WORDS = {"en": {"+": "plus", "-": "minus", "=": "is"}, "zh": {"+": "加", "-": "减", "=": "是"}}
"""The words of a worked step, per language (``zh`` only in code-switched chains)."""
DRILL_CHAINS = 2
"""Worked chains per drill document (plain practice text, as a base model's web data holds)."""


class TaskParams(BaseModel):
    """Size of the arithmetic problems (the held-out set is drawn with the defaults)."""

    model_config = ConfigDict(extra="forbid")
    max_operand: int = Field(9, ge=1, le=999, description="largest operand")
    min_terms: int = Field(3, ge=2, le=8, description="fewest operands in a problem")
    max_terms: int = Field(4, ge=2, le=8, description="most operands in a problem")
    max_total: int = Field(20, ge=0, description="cap on every running total; 0 means no cap")

    @model_validator(mode="after")
    def _terms_ordered(self) -> "TaskParams":
        if self.min_terms > self.max_terms:
            raise ValueError("min_terms must be <= max_terms")
        return self


HELDOUT_TASK = TaskParams(max_operand=9, min_terms=3, max_terms=4, max_total=20)


class CorpusMix(BaseModel):
    """Which forms the pretraining documents take: ``clean`` .. ``bare`` split the R1-Zero-template
    documents (they sum to 1); ``r1_fraction`` and ``drill_fraction`` are shares of all documents."""

    model_config = ConfigDict(extra="forbid")
    clean: float = Field(0.3, ge=0, le=1, description="tagged, correct worked steps")
    slip: float = Field(
        0.05, ge=0, le=1, description="tagged, one step misreads the question, carried to the answer"
    )
    guess: float = Field(0.45, ge=0, le=1, description="tagged, no working, an answer near the right one")
    untagged: float = Field(0.05, ge=0, le=1, description="correct working and answer, no tags")
    bare: float = Field(0.15, ge=0, le=1, description="no tags, no working, an answer near the right one")
    r1_fraction: float = Field(
        0.1, ge=0, le=1, description="share of all documents in the R1 template (clean)"
    )
    drill_fraction: float = Field(
        0.25, ge=0, le=1, description="share of all documents that are plain worked chains, no template"
    )
    mixed_language: float = Field(
        0.0, ge=0, le=1, description="share of worked chains that code-switch: each step in English or "
        "Chinese words at random (0: English only)"
    )

    @model_validator(mode="after")
    def _sums_to_one(self) -> "CorpusMix":
        total = self.clean + self.slip + self.guess + self.untagged + self.bare
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"clean + slip + guess + untagged + bare must be 1, got {total}")
        if self.r1_fraction + self.drill_fraction > 1:
            raise ValueError("r1_fraction + drill_fraction must be <= 1")
        return self


@dataclass(frozen=True)
class Problem:
    """One problem: ``question`` for the prompt, ``answer`` to verify, ``solution_steps`` to teach."""

    id: str
    question: str
    answer: str
    solution_steps: str

    def row(self) -> dict[str, str]:
        return {"id": self.id, "question": self.question, "answer": self.answer}


Expr = tuple[tuple[int, ...], tuple[str, ...]]
"""(operands, operators): the canonical form of a problem."""


def canonical_key(question: str) -> str:
    """Canonical form of a question's expression, in words or symbols: ``12+7-3``."""
    symbols = re.sub(r"\b(plus|minus)\b", lambda m: "+" if m.group(1) == "plus" else "-", question)
    return re.sub(r"[^0-9+\-]", "", symbols)


def draw_expr(rng: random.Random, task: TaskParams) -> Expr:
    """Operands in 1..max_operand; running totals stay in 0..max_total (no cap when 0)."""
    cap = task.max_total or None
    n = rng.randint(task.min_terms, task.max_terms)
    total = rng.randint(1, min(task.max_operand, cap or task.max_operand))
    operands, ops = [total], []
    for _ in range(n - 1):
        can_add, can_sub = cap is None or total < cap, total >= 1
        op = rng.choice("+-") if can_add and can_sub else ("+" if can_add else "-")
        room = cap - total if cap else task.max_operand  # how far an addition may go
        high = min(task.max_operand, room) if op == "+" else min(total, task.max_operand)
        b = rng.randint(1, high)
        total = total + b if op == "+" else total - b
        operands.append(b)
        ops.append(op)
    return tuple(operands), tuple(ops)


def running_totals(expr: Expr) -> list[int]:
    """Totals after each operation (one per operator)."""
    operands, ops = expr
    totals, total = [], operands[0]
    for op, b in zip(ops, operands[1:]):
        total = total + b if op == "+" else total - b
        totals.append(total)
    return totals


def question_text(expr: Expr) -> str:
    """``Compute 12 + 7 - 3`` (the worked steps then read it out in words)."""
    operands, ops = expr
    return "Compute " + " ".join([str(operands[0])] + [f"{op} {b}" for op, b in zip(ops, operands[1:])])


def spoken(operands: tuple[int, ...], ops: tuple[str, ...], lang: str = "en") -> str:
    """An expression in words: ``12 minus 3 plus 8``."""
    return " ".join([str(operands[0])] + [f"{WORDS[lang][op]} {b}" for op, b in zip(ops, operands[1:])])


def steps_text(expr: Expr, langs: tuple[str, ...] | None = None) -> str:
    """Worked steps as a chain that folds the first two numbers each time:
    ``7 plus 5 minus 3 is 12 minus 3 is 9.`` — step ``i`` (and the "is" that opens it) in
    language ``langs[i]`` (all English by default).

    >>> steps_text(((7, 5, 3), ("+", "-")), ("en", "zh", "zh"))
    '7 plus 5 minus 3 是 12 减 3 是 9.'
    """
    operands, ops = expr
    totals = [operands[0]] + running_totals(expr)
    langs = langs or ("en",) * len(totals)
    parts = [spoken((totals[i],) + operands[i + 1 :], ops[i:], langs[i]) for i in range(len(totals))]
    return parts[0] + "".join(f" {WORDS[lang]['=']} {part}" for lang, part in zip(langs[1:], parts[1:])) + "."


def code_switch(expr: Expr, rng: random.Random, share: float) -> tuple[str, ...] | None:
    """With probability ``share``, a language per step (English or Chinese at random); else None.
    Draws nothing when ``share`` is 0, so English-only corpora stay what they were."""
    if not share or rng.random() >= share:
        return None
    return tuple(rng.choice(tuple(WORDS)) for _ in range(len(expr[1]) + 1))


def misread(expr: Expr, rng: random.Random) -> Expr:
    """The problem with one step misread: an operator flipped or an operand off by one.

    The arithmetic of the misread problem is still right, so the corpus never states a false
    fact (which would slow learning the skill); only the reading of the question goes wrong.
    Every variant keeps the running totals non-negative, changes the final answer and is not a
    held-out problem (if none qualifies the problem is read right).
    """
    operands, ops = expr
    variants = []
    for i, (op, b) in enumerate(zip(ops, operands[1:])):
        flipped = ops[:i] + ("-" if op == "+" else "+",) + ops[i + 1 :]
        variants.append((operands, flipped))
        for wrong in (b - 1, b + 1):
            if wrong >= 1:
                variants.append((operands[: i + 1] + (wrong,) + operands[i + 2 :], ops))
    held = heldout_keys()
    valid = [v for v in variants if min(running_totals(v)) >= 0 and canonical_key(question_text(v)) not in held]
    return rng.choice(valid) if valid else expr


def make_problem(expr: Expr, pid: str) -> Problem:
    totals = running_totals(expr)
    return Problem(pid, question_text(expr), str(totals[-1]), steps_text(expr))


def _expr_stream(seed: int, task: TaskParams, exclude: frozenset[str]) -> Iterator[Expr]:
    """Endless draws outside ``exclude`` (fails if it keeps hitting excluded problems)."""
    rng, misses = random.Random(seed), 0
    while True:
        expr = draw_expr(rng, task)
        if canonical_key(question_text(expr)) in exclude:
            misses += 1
            if misses > 100_000:
                raise ValueError(f"{task} draws almost only held-out problems")
            continue
        misses = 0
        yield expr


def _exprs(n: int, seed: int, task: TaskParams, exclude: frozenset[str], unique: bool) -> list[Expr]:
    out, seen = [], set()
    for tries, expr in enumerate(_expr_stream(seed, task, exclude)):
        if len(out) == n:
            break
        if tries > 1000 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct problems from {task} outside the held-out set")
        key = canonical_key(question_text(expr))
        if unique and key in seen:
            continue
        seen.add(key)
        out.append(expr)
    return out


def generate_problems(
    n: int, seed: int, task: TaskParams | None = None, *, unique: bool = False, prefix: str = "arith"
) -> list[Problem]:
    """``n`` training problems drawn with ``seed``, none of them in the held-out set."""
    exprs = _exprs(n, seed, task or TaskParams(), heldout_keys(), unique)
    return [make_problem(e, f"{prefix}-{seed}-{i}") for i, e in enumerate(exprs)]


def rl_prompts(n: int, seed: int, task: TaskParams | None = None) -> list[Problem]:
    """A set of ``n`` distinct RL prompts (held-out problems excluded)."""
    return generate_problems(n, seed, task, unique=True, prefix="rl")


def corpus_document(expr: Expr, form: str, rng: random.Random, mixed_language: float = 0.0) -> str:
    """One pretraining document (without EOS) in one of the corpus forms."""
    q, totals = question_text(expr), running_totals(expr)
    steps, answer = steps_text(expr, code_switch(expr, rng, mixed_language)), str(totals[-1])
    if form == "r1":
        return render_prompt(q, "r1") + r1_completion(steps, answer)
    prompt = render_prompt(q, "r1_zero")
    if form == "clean":
        return prompt + r1_zero_completion(steps, answer)
    if form == "slip":
        wrong = misread(expr, rng)
        wrong_steps = steps_text(wrong, code_switch(wrong, rng, mixed_language))
        return prompt + r1_zero_completion(wrong_steps, str(running_totals(wrong)[-1]))
    if form in ("guess", "bare"):
        guessed = str(max(0, totals[-1] + rng.randint(-GUESS_SPREAD, GUESS_SPREAD)))
        if form == "bare":
            return prompt + f" The answer is {guessed}."
        return prompt + r1_zero_completion(GUESS_REASONING, guessed)
    if form == "untagged":
        return prompt + f" {steps} The answer is {answer}."
    raise ValueError(f"unknown corpus form {form!r}")


def drill(expr: Expr, langs: tuple[str, ...] | None = None) -> str:
    """Plain practice text: ``Compute 6 plus 7 minus 9: 6 plus 7 minus 9 is 13 minus 9 is 4.``"""
    return f"{question_text(expr)}: {steps_text(expr, langs)}"


def pretraining_corpus(n_docs: int, seed: int, mix: CorpusMix, task: TaskParams | None = None) -> list[str]:
    """``n_docs`` documents (EOS not included) mixed as ``mix`` says; held-out problems excluded."""
    rng = random.Random(f"corpus-forms-{seed}")
    stream = _expr_stream(seed, task or TaskParams(), heldout_keys())
    forms = ("clean", "slip", "guess", "untagged", "bare")
    weights = (mix.clean, mix.slip, mix.guess, mix.untagged, mix.bare)
    docs = []
    for _ in range(n_docs):
        pick = rng.random()
        if pick < mix.drill_fraction:
            chains = [next(stream) for _ in range(DRILL_CHAINS)]
            docs.append(" ".join(drill(e, code_switch(e, rng, mix.mixed_language)) for e in chains))
        elif pick < mix.drill_fraction + mix.r1_fraction:
            docs.append(corpus_document(next(stream), "r1", rng, mix.mixed_language))
        else:
            docs.append(corpus_document(next(stream), rng.choices(forms, weights)[0], rng, mix.mixed_language))
    return docs


def heldout_problems(n: int, seed: int, task: TaskParams | None = None) -> list[Problem]:
    """Distinct problems drawn as the held-out set is (no exclusions)."""
    exprs = _exprs(n, seed, task or TaskParams(), frozenset(), unique=True)
    return [make_problem(e, f"heldout-{i:04d}") for i, e in enumerate(exprs)]


def heldout_jsonl() -> str:
    """The exact text of the held-out file: ``HELDOUT_SIZE`` problems from ``HELDOUT_SEED`` and
    ``HELDOUT_TASK`` (``scripts/make_heldout.py`` writes it once; ``HELDOUT_SHA256`` pins it)."""
    rows = heldout_problems(HELDOUT_SIZE, HELDOUT_SEED, HELDOUT_TASK)
    return "".join(json.dumps(p.row(), sort_keys=True) + "\n" for p in rows)


def load_heldout() -> list[dict[str, str]]:
    """Held-out rows ``{"id", "question", "answer"}``; raises if the file's sha256 is not the pinned one."""
    data = HELDOUT_PATH.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != HELDOUT_SHA256:
        raise ValueError(f"{HELDOUT_PATH} sha256 is {digest}, expected {HELDOUT_SHA256}")
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


_HELDOUT_KEYS: frozenset[str] | None = None


def heldout_keys() -> frozenset[str]:
    """Canonical expressions of the held-out problems (cached)."""
    global _HELDOUT_KEYS
    if _HELDOUT_KEYS is None:
        _HELDOUT_KEYS = frozenset(canonical_key(r["question"]) for r in load_heldout())
    return _HELDOUT_KEYS
