"""Evaluation as in the paper (§3, "Evaluation Setup"): pass@1 over k samples, and cons@k.

The paper samples k responses per problem (temperature 0.6, top-p 0.95) and reports
pass@1 = (1/k) Σ_i p_i, the mean correctness over the k samples, averaged over problems, and
cons@k, the correctness of the majority-voted answer. Next to those this module reports what is
needed to read a small-model result honestly:

- ``pass_at_1_stderr``: the standard error of pass@1 over problems (sample std / sqrt(#problems)).
- ``pass_at_j`` for j in 1, 2, 4, ... up to k: the unbiased estimator of Chen et al. 2021 (Codex,
  eq. 1), 1 − C(n−c, j) / C(n, j) with n = k samples and c correct.
- ``format_rate``: share of samples the format reward accepts (score ≥ 1.0).
- ``mixed_language_rate``: share of samples whose reasoning (the whole completion when it has no
  reasoning block) holds words of more than one language — the readability fault §2.3.2 names.
- ``lenient_pass_at_1``: a sample counts when it is strictly correct OR the last number anywhere in
  it equals the (numeric) gold. It ignores the answer format, so a strict pass@1 gain that is only
  formatting shows up as lenient pass@1 staying flat.
- ``mean_length`` (completion tokens, EOS included) and ``truncated_rate`` (cut at the budget).

Majority vote: answers are compared after ``normalize_answer`` (whitespace, ``$``, thousands
separators and numeric spelling such as ``16.0``/``16`` removed); samples with no extractable answer
do not vote; ties go to the answer that appeared first in sample order, so the vote is a pure
function of the samples. cons@k scores the first sample that voted for the winner (all its
voters share one answer). Equal values in different LaTeX spellings (``\\frac12``, ``0.5``) vote
apart. Metric names avoid ``@`` because MLflow rejects it.

Answer format (``answer_format``: "r1", "boxed", or "auto" = the template's default,
``r1flow.templates.default_answer_format``): where correctness and the majority vote read each
sample's answer (``r1flow.rewards.parsing``). An R1-format policy answers after ``</think>``; a
plain chain-of-thought base or instruct model (template "boxed") answers in its last
``\\boxed{}``. Graded with the R1 rule, such a model scores 0 everywhere, while the pass@1
published for the models the paper compares against (§3, evaluation setup, arXiv 2501.12948) is
graded by their own harnesses (Qwen2.5-Math's) on the last ``\\boxed{}``; the "boxed" format
makes a base's pass@1 comparable with those numbers.
``lenient_pass_at_1`` reads the last number of the whole completion under every format.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from r1flow.chunks import ChunkLog, owned_chunks
from r1flow.engine import GenerationEngine
from r1flow.rewards import (
    AccuracyReward,
    extract_answer,
    get_reward,
    gold_answer,
    mixes_languages,
    split_completion,
)
from r1flow.rewards.parsing import clean_answer, last_number, resolve_answer_format
from r1flow.templates import render_prompt, stop_strings
from r1flow.tracking import NullTracker, Tracker

_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


@dataclass
class EvalResult:
    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 − C(n−c, k) / C(n, k).

    >>> pass_at_k(4, 1, 2)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    0.5
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # C(n−c, k)/C(n, k) = Π_{i=n−c+1}^{n} (1 − k/i): stable for large n (Chen et al. 2021).
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def normalize_answer(answer: str) -> str:
    """Canonical spelling used for voting: ``" $2,125.0 "`` -> ``"2125"``."""
    text = re.sub(r"\s+", "", clean_answer(answer))
    number = _as_decimal(text)
    if number is None:
        return text
    return _decimal_str(number)


def majority_vote(answers: list[str | None]) -> str | None:
    """The most common normalized answer (None answers do not vote); ties -> first seen.

    >>> majority_vote(["3", "4", "4.0", None, "3"])  # "3" and "4" both have 2; "3" came first
    '3'
    """
    voted = [normalize_answer(a) for a in answers if a is not None]
    if not voted:
        return None
    counts = Counter(voted)
    best = max(counts.values())
    return next(a for a in voted if counts[a] == best)


def lenient_match(completion: str, gold: str) -> bool:
    """True when the last number anywhere in ``completion`` equals the (numeric) gold.

    >>> lenient_match("so it is 1,200 apples", "#### 1200")
    True
    """
    gold_number, last = _as_decimal(gold_answer(gold)), last_number(completion)
    return gold_number is not None and last is not None and _as_decimal(clean_answer(last)) == gold_number


def problem_metrics(correct: list[float], answers: list[str | None]) -> dict[str, float]:
    """Per-problem pass@1 and cons@k inputs: mean correctness and the voted sample's correctness."""
    vote = majority_vote(answers)
    cons = 0.0
    if vote is not None:
        first = next(i for i, a in enumerate(answers) if a is not None and normalize_answer(a) == vote)
        cons = correct[first]
    return {"pass_at_1": sum(correct) / len(correct), "cons": cons}


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std with ddof=1; 0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def evaluate_model(engine: GenerationEngine, problems: list[dict[str, str]], *, template: str, k: int,
                   temperature: float = 0.6, top_p: float = 0.95, max_new_tokens: int = 256,
                   seed: int | None = 0, batch_size: int = 64, grading_timeout_s: float = 5.0,
                   tracker: Tracker | None = None, chunks: ChunkLog | None = None,
                   shard: tuple[int, int] | None = None, answer_format: str = "auto") -> EvalResult | None:
    """Sample ``k`` completions per problem and score them (see the module docstring).

    ``problems`` are rows with ``question`` and ``answer`` (``id`` optional); ``batch_size`` is the
    number of problems per ``engine.generate`` call, and call ``c`` uses seed ``seed + c``.
    Correctness is the accuracy reward (``r1flow.rewards``), graded with a per-sample deadline of
    ``grading_timeout_s`` (an overrun scores 0 and is counted in ``grading_timeouts``), reading
    answers in ``answer_format`` ("auto": the template's default), as the majority vote does.

    Call ``c``'s completions are a pure function of ``c``, so they can be saved and reused
    (``chunks``, ``r1flow.chunks``: a killed evaluation resumes) and split over processes:
    ``shard=(j, N)`` only generates and saves the calls c with c mod N = j and returns None; the
    run that follows with every chunk saved scores them all — the same result for any N.
    """
    if not problems:
        raise ValueError("no problems to evaluate")
    if k < 1 or batch_size < 1:
        raise ValueError(f"k and batch_size must be >= 1, got k={k}, batch_size={batch_size}")
    tracker = tracker or NullTracker()
    answer_format = resolve_answer_format(answer_format, template)
    accuracy_fn = AccuracyReward(timeout_s=grading_timeout_s, answer_format=answer_format)
    format_fn = get_reward("format", template=template)
    tokenizer = getattr(engine, "tokenizer", None)  # the "chat" template renders through it
    samples: list[dict[str, Any]] = []
    per_problem: list[dict[str, float]] = []
    timeouts = 0

    def generate(call: int, start: int) -> list[dict[str, Any]]:
        chunk = problems[start:start + batch_size]
        rollouts = engine.generate([render_prompt(p["question"], template, tokenizer) for p in chunk],
                                   n=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                   seed=None if seed is None else seed + call, stop=stop_strings(template))
        return [{"problem": p, "completion": t, "finish_reason": f, "length": int(n)} for p, t, f, n in zip(
            rollouts.prompt_index, rollouts.texts, rollouts.finish_reasons, rollouts.completion_lengths.tolist())]

    calls = -(-len(problems) // batch_size)
    for call, start, rows in owned_chunks(len(problems), batch_size, generate, chunks=chunks, shard=shard):
        chunk = problems[start:start + batch_size]
        tracker.progress(call + 1, calls, problems=start + len(chunk))
        if shard:
            continue
        texts = [r["completion"] for r in rows]
        golds = [str(chunk[r["problem"]]["answer"]) for r in rows]
        correct = accuracy_fn(texts, golds)
        timeouts += getattr(correct, "n_timeouts", 0)
        formats = format_fn(texts, golds)
        answers = [extract_answer(t, template, answer_format) for t in texts]
        mixed = [mixes_languages(split_completion(t, template)[0] or t) for t in texts]
        lenient = [max(c, float(lenient_match(t, g))) for c, t, g in zip(correct, texts, golds)]
        for p_local, problem in enumerate(chunk):
            mine = range(p_local * k, (p_local + 1) * k)
            stats = problem_metrics([correct[j] for j in mine], [answers[j] for j in mine])
            stats["lenient"] = sum(lenient[j] for j in mine) / k
            stats["n_correct"] = sum(correct[j] >= 1.0 for j in mine)
            per_problem.append(stats)
            samples += [{"id": str(problem.get("id", start + p_local)), "sample": s, "question": problem["question"],
                         "gold": golds[j], "completion": texts[j], "extracted": answers[j],
                         "correct": correct[j], "lenient": lenient[j], "format": formats[j],
                         "mixed_language": mixed[j], "length": rows[j]["length"],
                         "finish_reason": rows[j]["finish_reason"]}
                        for s, j in enumerate(mine)]
    if shard:
        return None
    return EvalResult(metrics={**aggregate(per_problem, samples, k), "grading_timeouts": float(timeouts)},
                      samples=samples)


def aggregate(per_problem: list[dict[str, float]], samples: list[dict[str, Any]], k: int) -> dict[str, float]:
    """Benchmark metrics from per-problem stats and the sample rows."""
    pass1, stderr = mean_and_stderr([p["pass_at_1"] for p in per_problem])
    metrics = {
        "pass_at_1": pass1,
        "pass_at_1_stderr": stderr,
        f"cons_at_{k}": sum(p["cons"] for p in per_problem) / len(per_problem),
        "lenient_pass_at_1": sum(p["lenient"] for p in per_problem) / len(per_problem),
        "format_rate": sum(s["format"] >= 1.0 for s in samples) / len(samples),
        "mixed_language_rate": sum(bool(s.get("mixed_language")) for s in samples) / len(samples),
        "mean_length": sum(s["length"] for s in samples) / len(samples),
        "truncated_rate": sum(s["finish_reason"] == "length" for s in samples) / len(samples),
        "num_problems": float(len(per_problem)),
    }
    for j in _pass_ks(k):
        metrics[f"pass_at_{j}"] = sum(pass_at_k(k, int(p["n_correct"]), j) for p in per_problem) / len(per_problem)
    return metrics


def _pass_ks(k: int) -> list[int]:
    """1, 2, 4, ... below k, and k itself."""
    return sorted({2 ** i for i in range(k.bit_length()) if 2 ** i < k} | {k})


def _as_decimal(text: str) -> Decimal | None:
    if not _DECIMAL.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _decimal_str(number: Decimal) -> str:
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")
