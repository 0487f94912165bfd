"""JSONL dataset I/O: every malformed case fails naming file and line; writes are atomic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from r1flow.data.io import DatasetError, dataset_digest, read_jsonl, write_jsonl

ROW_FIELDS = {"question": str, "answer": str}
GSM8K = Path("/work/shared/data/gsm8k/test.jsonl")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_valid_rows_skipping_blank_lines_and_keeping_extra_fields(tmp_path):
    path = _write(tmp_path, '{"question": "q1", "answer": "1", "extra": 5}\n\n{"question": "q2", "answer": "2"}\n')
    assert read_jsonl(path, ROW_FIELDS) == [
        {"question": "q1", "answer": "1", "extra": 5},
        {"question": "q2", "answer": "2"},
    ]


def test_reads_a_real_benchmark_file():
    rows = read_jsonl(GSM8K, ROW_FIELDS)
    assert len(rows) == 1319  # the count in shared/data/README.md
    assert rows[0]["answer"].endswith("#### 18")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('{"question": "q", "answer": "1"}\n{"question": "q", "answer": \n', 2, "invalid JSON"),
        ('{"question": "q", "answer": "1"}\n\n{"question": "q"}\n', 3, "missing field 'answer'"),
        ('{"question": "q", "answer": 1}\n', 1, "field 'answer' should be str, got int"),
        ('{"question": "q", "answer": "1"}\n["q", "1"]\n', 2, "expected a JSON object, got list"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, text, line, message):
    path = _write(tmp_path, text)
    with pytest.raises(DatasetError) as caught:
        read_jsonl(path, ROW_FIELDS)
    assert f"{path}:{line}:" in str(caught.value)
    assert message in str(caught.value)


def test_non_utf8_line_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"question": "q", "answer": "1"}\n{"question": "\xff", "answer": "1"}\n')
    with pytest.raises(DatasetError, match=rf"{path}:2: not UTF-8"):
        read_jsonl(path, ROW_FIELDS)


def test_bool_is_not_an_int_but_an_int_is_a_float(tmp_path):
    path = _write(tmp_path, '{"level": 3, "score": 1}\n{"level": true, "score": 0.5}\n')
    with pytest.raises(DatasetError, match=r":2: field 'level' should be int, got bool"):
        read_jsonl(path, {"level": int, "score": float})
    assert read_jsonl(path, {"score": float})[0]["score"] == 1


def test_missing_and_empty_files_are_named(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DatasetError, match=rf"{missing}: no such file"):
        read_jsonl(missing, ROW_FIELDS)
    empty = _write(tmp_path, "\n  \n")
    with pytest.raises(DatasetError, match=rf"{empty}: empty dataset"):
        read_jsonl(empty, ROW_FIELDS)


def test_write_read_round_trip_and_digest_equals_file_sha256(tmp_path):
    rows = [{"question": "芳芳买了一本书有99页", "answer": "9"}, {"answer": "2", "question": "q2"}]
    path = write_jsonl(tmp_path / "sub" / "out.jsonl", rows)
    assert read_jsonl(path, ROW_FIELDS) == rows
    assert dataset_digest(rows) == hashlib.sha256(path.read_bytes()).hexdigest()
    # Canonical: key order does not change the digest; content does.
    assert dataset_digest([{"a": 1, "b": 2}]) == dataset_digest([{"b": 2, "a": 1}])
    assert dataset_digest([{"a": 1}]) != dataset_digest([{"a": 2}])


@pytest.mark.parametrize("bad", [{"question": "q", "answer": {1, 2}}, {"x": float("nan")}, ["not", "a", "dict"]])
def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, bad):
    path = tmp_path / "out.jsonl"
    with pytest.raises(DatasetError, match=r"row 1"):
        write_jsonl(path, [{"question": "q", "answer": "1"}, bad])
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp file

    write_jsonl(path, [{"question": "old", "answer": "0"}])
    with pytest.raises(DatasetError):
        write_jsonl(path, [{"question": "new", "answer": "1"}, bad])
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
    assert json.loads(path.read_text()) == {"question": "old", "answer": "0"}
