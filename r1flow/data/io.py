"""JSON Lines datasets: validated reads, atomic writes, content digests.

Every stage hands its data to the next one as a JSONL file, so a bad row must fail where it is
read, naming the file and line, not three stages later as a ``KeyError`` in a trainer. Writes go
to a temporary file in the same folder and are renamed into place, so a crash or an
unserializable row never leaves a half-written dataset that a resumed stage would trust.

The on-disk form is canonical (sorted keys, compact separators, UTF-8, one object per line), so
``dataset_digest(rows)`` equals the sha256 of the file ``write_jsonl`` writes for those rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

FieldType = type | tuple[type, ...]


class DatasetError(ValueError):
    """A dataset file or row that cannot be used; the message names the file and line."""


def canonical_line(row: Mapping[str, Any]) -> str:
    """One row as canonical JSON plus newline (raises TypeError/ValueError if not JSON)."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"


def _type_ok(value: Any, expected: FieldType) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true/false must not pass as an int or float field
    if isinstance(value, int) and float in types:
        return True  # JSON has one number type: 3 is a valid float
    return isinstance(value, types)


def _type_name(expected: FieldType) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(t.__name__ for t in types)


def parse_row(text: str, required: Mapping[str, FieldType], where: str) -> dict[str, Any]:
    """Parse and validate one JSONL line; ``where`` ("file:line") prefixes every error."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name, expected in required.items():
        if name not in row:
            raise DatasetError(f"{where}: missing field {name!r}")
        if not _type_ok(row[name], expected):
            raise DatasetError(
                f"{where}: field {name!r} should be {_type_name(expected)}, got {type(row[name]).__name__}"
            )
    return row


def jsonl_lines(path: str | os.PathLike[str], what: str = "dataset") -> list[tuple[int, str]]:
    """The non-blank (line number, text) pairs of a JSONL file; errors name the file (and line)."""
    path = Path(path)
    try:
        raw_lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a directory, not a JSONL file") from None
    lines = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DatasetError(f"{path}:{number}: not UTF-8 ({err.reason} at byte {err.start})") from None
        if text.strip():
            lines.append((number, text))
    if not lines:
        raise DatasetError(f"{path}: empty {what} (no rows)")
    return lines


def read_jsonl(path: str | os.PathLike[str], required: Mapping[str, FieldType]) -> list[dict[str, Any]]:
    """Read a JSONL file whose every row has the ``required`` fields with the given types.

    Blank lines are skipped; a file with no rows is an error. Extra fields are kept.
    """
    return [parse_row(text, required, f"{path}:{number}") for number, text in jsonl_lines(path)]


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``rows`` as canonical JSONL, atomically: all rows appear at ``path``, or nothing changes.

    Raises DatasetError naming the row index if a row is not a JSON object or not serializable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for index, row in enumerate(rows):
                if not isinstance(row, Mapping):
                    raise DatasetError(f"{path}: row {index} is a {type(row).__name__}, not a mapping")
                try:
                    handle.write(canonical_line(row))
                except (TypeError, ValueError) as err:
                    raise DatasetError(f"{path}: row {index} is not JSON-serializable ({err})") from err
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def dataset_digest(rows: Iterable[Mapping[str, Any]]) -> str:
    """sha256 hex digest of the rows' canonical JSON lines (equals the digest of write_jsonl's file)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(canonical_line(row).encode("utf-8"))
    return digest.hexdigest()
