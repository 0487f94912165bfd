"""Accuracy reward (paper §2.2.2): 1.0 when the final answer equals the gold, else 0.0.

Rule-based and graded by math-verify (``parse`` + ``verify``). Choices:
1. Only the final answer counts (``parsing.extract_answer``: after the first ``</think>``, in
   ``<answer>`` when present, else the last ``\\boxed{}``, else the last number). A completion
   whose thinking never closes scores 0. That is the ``"r1"`` answer format, the default.
   Plain chain-of-thought models (base or instruct models before RL, the ``"boxed"`` template)
   are graded with ``answer_format="boxed"``: the whole completion's last ``\\boxed{}`` (else its
   last number), as the harnesses behind the baselines' published pass@1 grade them (paper §3,
   evaluation setup, arXiv 2501.12948; see ``parsing``). Under ``"r1"`` such a model scores 0
   on every problem, so its pass@1 would say nothing about the base.
2. math-verify's own timeouts use ``signal.alarm``, which fails off the main thread; they are
   switched off (``parsing_timeout=None``, ``timeout_seconds=None``) so ``accuracy`` gives the
   same result on every thread. The deadline is enforced from outside instead:
   ``AccuracyReward`` grades in a ``GradingPool`` whose workers are killed when they overrun.
3. Both sides are parsed as ``\\boxed{answer}``: math-verify reads a bare ``6 - 5i`` as its
   last number (5), and a bare ``\\pi`` as nothing. An answer that still holds ``$…$`` math
   (``The answer is $5$``) is parsed as written.
4. When both answers are plain integers of at most 18 digits they are compared exactly,
   in-process (``quick_accuracy``): math-verify gives the same verdict there (tested on real
   golds), and GSM8K-style batches then never wait on a worker.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Sequence

from math_verify import parse, verify

from r1flow.rewards.parsing import check_answer_format, extract_answer, gold_answer
from r1flow.rewards.pool import GradeFn, GradingPool, default_pool

_INTEGER = re.compile(r"[+-]?\d{1,18}")
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


class _OwnDeadlines(logging.Filter):
    """Drops math-verify's notice that its timeout is off: ``GradingPool`` enforces ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_OwnDeadlines())


def _as_latex(answer: str) -> str:
    return answer if _UNESCAPED_DOLLAR.search(answer) else f"\\boxed{{{answer}}}"


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> list:
    return parse(_as_latex(gold), parsing_timeout=None)


def _quick(prediction: str | None, gold: str) -> float | None:
    if prediction is None:
        return 0.0
    if _INTEGER.fullmatch(prediction) and _INTEGER.fullmatch(gold):
        return float(int(prediction) == int(gold))
    return None


def _prediction(completion: str, answer_format: str) -> str | None:
    return extract_answer(completion, answer_format=check_answer_format(answer_format))


def quick_accuracy(completion: str, gold: str, answer_format: str = "r1") -> float | None:
    """``accuracy`` when it needs no math-verify (no answer, or two integers), else None."""
    return _quick(_prediction(completion, answer_format), gold_answer(gold))


def accuracy(completion: str, gold: str, answer_format: str = "r1") -> float:
    """1.0 when the completion's final answer (in ``answer_format``, "r1" or "boxed") equals
    the gold's, else 0.0 (no timeout here).

    >>> accuracy(" <think> 2 + 3 = 5 </think> <answer> 5 </answer>", "#### 5")
    1.0
    >>> accuracy(" 14/3 </think> So the answer is \\\\boxed{\\\\frac{28}{6}}.", "\\\\frac{14}{3}")
    1.0
    >>> accuracy(" <think> the answer is 5 <answer> 5 </answer>", "5")  # thinking never closed
    0.0
    >>> [accuracy("2 + 3 = 5. The answer is \\\\boxed{5}.", "5", f) for f in ("r1", "boxed")]
    [0.0, 1.0]
    """
    prediction, target = _prediction(completion, answer_format), gold_answer(gold)
    quick = _quick(prediction, target)
    if quick is not None:
        return quick
    predicted = parse(_as_latex(prediction), parsing_timeout=None)
    return float(verify(_parse_gold(target), predicted, timeout_seconds=None))


def boxed_accuracy(completion: str, gold: str) -> float:
    """``accuracy`` under the ``"boxed"`` answer format (module level: pool workers import it)."""
    return accuracy(completion, gold, "boxed")


_GRADERS: dict[str, GradeFn] = {"r1": accuracy, "boxed": boxed_accuracy}


def grader(answer_format: str = "r1") -> GradeFn:
    """The two-argument ``fn(completion, gold)`` that grades ``answer_format`` (for a pool)."""
    return _GRADERS[check_answer_format(answer_format)]


class BatchScores(list):
    """A batch's scores (a plain ``list[float]`` to any caller) and its ``n_timeouts``."""

    def __init__(self, scores: Sequence[float], n_timeouts: int = 0) -> None:
        super().__init__(scores)
        self.n_timeouts = n_timeouts


class AccuracyReward:
    """Batch accuracy reward with a per-item deadline: ``fn(completions, golds) -> scores``.

    Integer answers are graded in-process; the rest go to ``pool`` (the process-wide default
    pool when None), where an item that runs past ``timeout_s`` scores 0. The returned list
    carries that batch's count as ``n_timeouts``; ``total_timeouts`` sums them since creation.
    ``answer_format`` ("r1" or "boxed") says where the answers are (see ``accuracy``).
    """

    def __init__(
        self, timeout_s: float = 5.0, pool: GradingPool | None = None, answer_format: str = "r1"
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.__name__ = "accuracy"
        self.timeout_s, self.pool = timeout_s, pool
        self.answer_format = check_answer_format(answer_format)
        self.total_timeouts = 0
        self._lock = threading.Lock()

    def __call__(
        self, completions: Sequence[str], golds: Sequence[str], **kwargs: object
    ) -> BatchScores:
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
        scores = [quick_accuracy(c, g, self.answer_format) for c, g in zip(completions, golds)]
        slow = [i for i, score in enumerate(scores) if score is None]
        n_timeouts = 0
        if slow:
            pool = self.pool or default_pool()
            graded = pool.score(
                grader(self.answer_format),
                [completions[i] for i in slow],
                [golds[i] for i in slow],
                self.timeout_s,
            )
            for i, score in zip(slow, graded.scores):
                scores[i] = score
            n_timeouts = graded.n_timeouts
            with self._lock:
                self.total_timeouts += n_timeouts
        return BatchScores([float(score) for score in scores], n_timeouts)
