"""Benchmark loaders: every benchmark becomes rows ``{"id", "question", "answer"}``.

The paper evaluates on MATH-500, AIME, GSM8K-style sets and more (§3); the CPU presets use a fixed
held-out arithmetic file. Real benchmark files are read from local JSONL (nothing is fetched),
named by path or as ``FORMAT=PATH`` (``gsm8k=data/gsm8k/test.jsonl``), and normalized through one
code path: a ``BenchmarkFormat`` names the question and answer fields and
how to turn the stored answer into the gold string. Malformed files fail with a ``DatasetError``
(a ``ValueError``) naming the file and line.

- ``gsm8k``: ``question`` / ``answer``, gold = the text after ``####`` with thousands separators
  removed (``#### 2,125`` -> ``2125``).
- ``math500``: ``problem`` / ``answer`` (LaTeX, kept as is), id from ``unique_id``.
- ``plain``: ``question`` / ``answer`` as they are (CMATH, files written by r1flow).
- ``boxed``: ``problem`` / ``solution``, gold = the last ``\\boxed{}`` of the solution (MATH, NuminaMath).

A problem set on the hub, in S3, or with other column names is a ``DataSource`` (or its dict form, as
stages get configs): ``load_benchmark`` and ``benchmark_name`` take it too (``r1flow.data.sources``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r1flow.data.io import DatasetError, jsonl_lines, parse_row

if TYPE_CHECKING:
    from r1flow.data.sources import DataSource

ARITH_HELDOUT = "arith_heldout"


@dataclass(frozen=True)
class BenchmarkFormat:
    question_field: str
    answer_field: str
    gold: Callable[[str, str], str]  # (stored answer, "file:line") -> gold answer


def _gsm8k_gold(answer: str, where: str) -> str:
    if "####" not in answer:
        raise DatasetError(f"{where}: gsm8k answer has no '#### <final answer>' line")
    gold = answer.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise DatasetError(f"{where}: gsm8k answer is empty after '####'")
    return gold


def _as_is(answer: str, where: str) -> str:
    if not answer.strip():
        raise DatasetError(f"{where}: empty answer")
    return answer.strip()


def _boxed_gold(solution: str, where: str) -> str:
    from r1flow.rewards.parsing import last_boxed

    gold = last_boxed(solution)
    if gold is None or not gold.strip():
        raise DatasetError(f"{where}: no complete non-empty \\boxed{{}} in the solution")
    return gold.strip()


FORMATS: dict[str, BenchmarkFormat] = {
    "gsm8k": BenchmarkFormat("question", "answer", _gsm8k_gold),
    "math500": BenchmarkFormat("problem", "answer", _as_is),
    "plain": BenchmarkFormat("question", "answer", _as_is),
    "boxed": BenchmarkFormat("problem", "solution", _boxed_gold),
}


def _is_source(spec: Any) -> bool:
    from r1flow.data.sources import DataSource

    return isinstance(spec, (DataSource, Mapping))


def load_benchmark(name_or_path: str | os.PathLike[str] | DataSource | Mapping[str, Any],
                   fmt: str | None = None) -> list[dict[str, str]]:
    """Rows ``{"id", "question", "answer"}`` of ``"arith_heldout"``, ``"FORMAT=PATH"``, a path, or a
    ``DataSource`` / its dict form (``r1flow.data.sources.load_source``; ``fmt`` does not apply).

    The format (one of ``FORMATS``) comes from ``fmt``, else a ``gsm8k=`` style prefix, else the
    file's first row (``problem`` -> math500; an answer with ``####`` -> gsm8k; otherwise plain).
    """
    if _is_source(name_or_path):
        from r1flow.data.sources import load_source

        return load_source(name_or_path)
    if str(name_or_path) == ARITH_HELDOUT:
        from r1flow.data.arith import load_heldout

        return [{"id": r["id"], "question": r["question"], "answer": r["answer"]} for r in load_heldout()]
    prefix, path = split_spec(name_or_path)
    fmt = fmt or prefix
    if str(name_or_path) in FORMATS and not path.exists():
        raise ValueError(f"benchmark {str(name_or_path)!r} is read from a local JSONL file: pass its path "
                         f"(e.g. data/{name_or_path}/test.jsonl); nothing is downloaded")
    lines = jsonl_lines(path, "benchmark file")
    fmt = fmt or _detect_format(lines, path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown benchmark format {fmt!r}; known: {sorted(FORMATS)}")
    spec = FORMATS[fmt]
    required = {spec.question_field: str, spec.answer_field: str}
    rows = []
    for number, text in lines:
        where = f"{path}:{number}"
        row = parse_row(text, required, where)
        question = row[spec.question_field].strip()
        if not question:
            raise DatasetError(f"{where}: empty {spec.question_field!r}")
        stored_id = row.get("unique_id", row.get("id"))
        rows.append({
            "id": str(stored_id) if stored_id is not None else f"{benchmark_name(path)}-{len(rows):04d}",
            "question": question,
            "answer": spec.gold(row[spec.answer_field], where),
        })
    return rows


def split_spec(spec: str | os.PathLike[str]) -> tuple[str | None, Path]:
    """``"gsm8k=data/test.jsonl"`` -> ``("gsm8k", Path("data/test.jsonl"))``; a plain path -> ``(None, path)``."""
    prefix, sep, rest = str(spec).partition("=")
    if sep and prefix in FORMATS:
        return prefix, Path(rest)
    return None, Path(spec)


def benchmark_name(name_or_path: str | os.PathLike[str] | DataSource | Mapping[str, Any]) -> str:
    """A short metric-safe name: ``arith_heldout``, or ``<folder>_<stem>`` (``gsm8k_test``); a
    ``DataSource``: ``r1flow.data.sources.source_name`` (hub: ``gsm8k_main_test``)."""
    if _is_source(name_or_path):
        from r1flow.data.sources import source_name

        return source_name(name_or_path)
    if str(name_or_path) == ARITH_HELDOUT:
        return ARITH_HELDOUT
    path = split_spec(name_or_path)[1]
    raw = f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem
    return re.sub(r"[^\w.\-]+", "_", raw)


def _detect_format(lines: list[tuple[int, str]], path: Path) -> str:
    number, text = lines[0]
    row = parse_row(text, {}, f"{path}:{number}")
    if "problem" in row:
        return "math500"
    if isinstance(row.get("answer"), str) and "####" in row["answer"]:
        return "gsm8k"
    return "plain"
