"""Cold-start curation (paper §2.3.1) and the rejection-sampling filter (paper §2.3.3).

Cold start: from long-CoT rows ``{question, answer, completion}`` (a dataset file or the samples
of an R1-Zero run) keep the correct, well-formed, single-language, length-bounded examples, drop
duplicates and cap each question, and rewrite each one into the readable R1 format (reasoning,
then a summary: ``r1flow.templates.r1_completion``) under the R1 prompt template.

Rejection sampling: from samples ``{question, answer, completion, finish_reason, template}`` of
the RL checkpoint keep only correct ones and drop mixed-language chains of thought, long
paragraphs, code blocks and truncated outputs, as the paper lists; kept completions stay
verbatim (they already are in the model's readable format). Non-reasoning SFT rows can be mixed
in at a configured share (the paper's 600k reasoning + 200k non-reasoning is a share of 0.25).

Decontamination (not spelled out in the paper; standard practice, cf. open-r1's 8-gram filter):
an example is dropped when its question shares a word n-gram with any evaluation question, or
equals one after normalization (short synthetic problems have fewer than n words, so they have
no n-grams at all). Filters run in a fixed order and every removal is counted under the name
of the filter that removed it, so ``len(rows) == len(kept) + sum(counts.values())``.

Correctness is graded under a per-answer deadline (``grading_timeout_s``) in the rewards' grading
pool (``r1flow.data.filters.CorrectAnswer``): an answer whose grading overruns is removed as
incorrect, and the counts carry how many did as ``grading_timeouts`` (logged here, a metric in the
stages), so a batch of pathological samples shows up instead of hanging the stage.
"""

from __future__ import annotations

import logging
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from r1flow.data.filters import (
    CorrectAnswer,
    Example,
    Predicate,
    apply_filters,
    is_single_language,
    is_well_formed,
    no_code_blocks,
    no_long_paragraphs,
    not_truncated,
    reasoning_text,
    within_length,
)
from r1flow.rewards import GradingPool, gold_answer
from r1flow.templates import TEMPLATES, r1_completion, render_prompt

log = logging.getLogger(__name__)

SOURCE_FIELDS = {"question": str, "answer": str, "completion": str}
"""Fields of a cold-start source row (for ``read_jsonl``); ``template`` is optional."""
SAMPLE_FIELDS = {**SOURCE_FIELDS, "finish_reason": str, "template": str}
"""Fields of a rejection-sampling row."""
SFT_FIELDS = {"prompt": str, "completion": str}
"""Fields of an SFT example (the output here, and non-reasoning rows mixed in)."""

# Prose punctuation carries no content for matching; math symbols (+ - * / = ( ) ...) do.
_PROSE_PUNCTUATION = frozenset(".,;:!?\"'`“”‘’。、")
# A CJK ideograph is a word by itself; other letters/digits group into words; any other symbol
# is a token of its own.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")


class FilterParams(BaseModel):
    """What both curation and rejection sampling keep."""

    model_config = ConfigDict(extra="forbid")

    language: str = Field("en", description="Target language of the chain of thought (paper §2.3.2).")
    language_threshold: float = Field(
        0.95, ge=0.0, le=1.0, description="Minimum language-consistency score of the chain of thought to keep."
    )
    min_reasoning_chars: int = Field(1, ge=0, description="Shortest chain of thought kept, in characters.")
    max_reasoning_chars: int = Field(8000, gt=0, description="Longest chain of thought kept, in characters.")
    max_per_question: int | None = Field(
        4, ge=1, description="Most examples kept per (normalized) question; None keeps all."
    )
    max_examples: int | None = Field(
        None, ge=1, description="Most examples kept in total, spread over questions first; None keeps all."
    )
    grading_timeout_s: float = Field(
        5.0, gt=0, description="Seconds each answer may take to grade; an overrun counts as incorrect."
    )
    answer_format: Literal["r1", "boxed"] = Field(
        "r1", description="Where the final answer is read: 'r1' (after </think>) or 'boxed' (last \\boxed{})."
    )

    @model_validator(mode="after")
    def _length_bounds_ordered(self) -> FilterParams:
        if self.min_reasoning_chars > self.max_reasoning_chars:
            raise ValueError("min_reasoning_chars must not exceed max_reasoning_chars")
        return self


class CurationParams(FilterParams):
    """Cold-start curation (paper §2.3.1)."""

    source_template: str = Field(
        "r1_zero", description="Template the source completions were written for (rows without a 'template')."
    )
    ngram_n: int = Field(8, ge=1, description="Word n-gram size for decontamination against the eval questions.")

    @field_validator("source_template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        if value not in TEMPLATES:
            raise ValueError(f"unknown template {value!r}; known: {sorted(TEMPLATES)}")
        return value


class RejectionParams(FilterParams):
    """Rejection sampling (paper §2.3.3)."""

    language_threshold: float = Field(
        1.0, ge=0.0, le=1.0, description="Minimum language-consistency score; 1.0 drops any mixed-language CoT."
    )
    max_paragraph_chars: int = Field(
        2000, gt=0, description="Longest paragraph (text between blank lines) kept, in characters."
    )


def words(text: str) -> list[str]:
    """Matching tokens: NFKC, case-folded, one per word, CJK character or math symbol."""
    tokens = _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())
    return [t for t in tokens if t not in _PROSE_PUNCTUATION]


def normalize(text: str) -> str:
    """Text reduced to its matching tokens: equal for case, spacing and punctuation variants."""
    return " ".join(words(text))


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """All contiguous n-token windows (none when there are fewer than n tokens)."""
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def ngram_index(texts: Iterable[str], n: int) -> frozenset[tuple[str, ...]]:
    """The word n-grams of all ``texts`` (the evaluation questions)."""
    return frozenset(gram for text in texts for gram in ngrams(words(text), n))


def ngram_overlap(text: str, index: frozenset[tuple[str, ...]], n: int) -> int:
    """How many distinct word n-grams of ``text`` occur in ``index``."""
    return len(ngrams(words(text), n) & index)


def not_contaminated(eval_questions: Iterable[str], n: int) -> Predicate:
    """Keep examples whose question neither equals an eval question nor shares an n-gram with one."""
    eval_questions = list(eval_questions)
    index = ngram_index(eval_questions, n)
    exact = {normalize(q) for q in eval_questions}

    def keep(example: Example) -> bool:
        question = example["question"]
        return normalize(question) not in exact and ngram_overlap(question, index, n) == 0

    return keep


def dedupe(examples: Iterable[Example], max_per_question: int | None) -> tuple[list[Example], dict[str, int]]:
    """Drop repeats of (question, reasoning) after normalization; keep the first ``max_per_question``."""
    seen: set[tuple[str, str]] = set()
    per_question: Counter[str] = Counter()
    kept, counts = [], {"duplicate": 0, "max_per_question": 0}
    for example in examples:
        question = normalize(example["question"])
        key = (question, normalize(reasoning_text(example)))
        if key in seen:
            counts["duplicate"] += 1
        elif max_per_question is not None and per_question[question] >= max_per_question:
            counts["max_per_question"] += 1
        else:
            seen.add(key)
            per_question[question] += 1
            kept.append(example)
    return kept, counts


def spread_limit(examples: Sequence[Example], max_examples: int | None) -> tuple[list[Example], dict[str, int]]:
    """Keep at most ``max_examples``: every question's first example before any question's second.

    Input order is kept among the survivors; this covers as many questions as the limit allows.
    """
    if max_examples is None or len(examples) <= max_examples:
        return list(examples), {"max_examples": 0}
    seen: Counter[str] = Counter()
    ranks = []
    for index, example in enumerate(examples):
        question = normalize(example["question"])
        ranks.append((seen[question], index))
        seen[question] += 1
    chosen = sorted(index for _, index in sorted(ranks)[:max_examples])
    return [examples[i] for i in chosen], {"max_examples": len(examples) - max_examples}


class FilterCounts(dict):
    """How many rows each filter removed (a plain ``dict[str, int]`` to any caller), and
    ``grading_timeouts``: answers whose grading overran, already counted under ``incorrect``."""

    def __init__(self, counts: Mapping[str, int], grading_timeouts: int = 0) -> None:
        super().__init__(counts)
        self.grading_timeouts = grading_timeouts


def _filter_all(
    examples: Iterable[Example],
    filters: Sequence[tuple[str, Predicate]],
    params: FilterParams,
    correct: CorrectAnswer,
) -> tuple[list[Example], FilterCounts]:
    kept, counts = apply_filters(examples, filters)
    kept, dedupe_counts = dedupe(kept, params.max_per_question)
    kept, limit_counts = spread_limit(kept, params.max_examples)
    if correct.timeouts:
        log.warning("%d answer(s) took over %s s to grade: removed as incorrect", correct.timeouts,
                    params.grading_timeout_s)
    return kept, FilterCounts({**counts, **dedupe_counts, **limit_counts}, correct.timeouts)


def _correct(params: FilterParams, pool: GradingPool | None) -> CorrectAnswer:
    return CorrectAnswer(params.grading_timeout_s, params.answer_format, pool)


def _language(params: FilterParams) -> Predicate:
    return is_single_language(params.language, params.language_threshold)


def _length(params: FilterParams) -> Predicate:
    return within_length(params.min_reasoning_chars, params.max_reasoning_chars)


def to_readable(example: Example) -> dict[str, str]:
    """The paper's readable SFT format: R1 prompt; reasoning, then a summary with the answer.

    The summary states the gold's final answer (a GSM8K gold ``… #### 18`` gives ``18``).
    """
    return {
        "prompt": render_prompt(example["question"], "r1"),
        "completion": r1_completion(reasoning_text(example), gold_answer(example["answer"])),
    }


def curate(
    rows: Iterable[Mapping[str, Any]],
    eval_questions: Iterable[str],
    params: CurationParams,
    *,
    pool: GradingPool | None = None,
) -> tuple[list[dict[str, str]], FilterCounts]:
    """Cold-start SFT examples from long-CoT rows, and how many rows each filter removed.

    A row's own ``template`` field, when present, overrides ``params.source_template``.
    Order: contaminated, malformed, incorrect, mixed_language, length, duplicate,
    max_per_question, max_examples. Answers are graded in ``pool`` (None: the process-wide one).
    """
    examples = [{"template": params.source_template, **row} for row in rows]
    correct = _correct(params, pool)
    filters = [
        ("contaminated", not_contaminated(eval_questions, params.ngram_n)),
        ("malformed", is_well_formed),
        ("incorrect", correct),
        ("mixed_language", _language(params)),
        ("length", _length(params)),
    ]
    kept, counts = _filter_all(examples, filters, params, correct)
    return [to_readable(example) for example in kept], counts


def rejection_filter(
    samples: Iterable[Mapping[str, Any]], params: RejectionParams, *, pool: GradingPool | None = None
) -> tuple[list[dict[str, str]], FilterCounts]:
    """Rejection-sampled SFT examples (prompt under the sample's template, completion verbatim).

    Order: truncated, malformed, incorrect, mixed_language, code_block, long_paragraph, length,
    duplicate, max_per_question, max_examples. Answers are graded in ``pool`` (None: the
    process-wide one).
    """
    correct = _correct(params, pool)
    filters = [
        ("truncated", not_truncated),
        ("malformed", is_well_formed),
        ("incorrect", correct),
        ("mixed_language", _language(params)),
        ("code_block", no_code_blocks),
        ("long_paragraph", no_long_paragraphs(params.max_paragraph_chars)),
        ("length", _length(params)),
    ]
    kept, counts = _filter_all(samples, filters, params, correct)
    examples = [
        {"prompt": render_prompt(s["question"], s["template"]), "completion": s["completion"]} for s in kept
    ]
    return examples, counts


def mix_non_reasoning(
    examples: Sequence[Mapping[str, str]], non_reasoning_rows: Sequence[Mapping[str, str]], fraction: float, seed: int
) -> list[dict[str, str]]:
    """Add non-reasoning SFT rows so they make up ``fraction`` of the result, then shuffle.

    Draws ``round(len(examples) * fraction / (1 - fraction))`` rows without replacement (all of
    them if there are fewer); fraction 0 returns the examples, shuffled.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    rng = random.Random(seed)
    wanted = min(round(len(examples) * fraction / (1.0 - fraction)), len(non_reasoning_rows))
    mixed = [dict(e) for e in examples] + [dict(r) for r in rng.sample(list(non_reasoning_rows), wanted)]
    rng.shuffle(mixed)
    return mixed
