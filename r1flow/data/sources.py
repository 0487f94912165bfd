"""Problem sets where a production user keeps them: the hub, an S3 bucket, a local file of any shape.

Why: a ``FORMAT=PATH`` string only reaches a local JSON Lines file whose columns r1flow already
knows. Real prompt sets and benchmarks live on the Hugging Face hub or in a bucket, each with its
own column names and its own way of writing the gold (NuminaMath: ``problem``/``solution`` with a
``\\boxed{}``; OpenR1-Math: ``problem``/``answer``; GSM8K: ``question``/``answer`` ending in
``#### n``; MATH-500: ``problem``/``answer``/``unique_id``). A ``DataSource`` says where the rows
are, which columns hold what, and how the gold is derived; ``load_source`` turns it into the rows
``{"id", "question", "answer"}`` that ``r1flow.data.benchmarks.load_benchmark`` gives for strings.
A config field holding a source takes either form (``SourceSpec``), e.g. in YAML::

    evaluate:
      benchmarks:
        - arith_heldout
        - {path: "hf://openai/gsm8k", name: main, split: test, revision: <commit>, format: gsm8k}
        - {path: s3://data/numina/train.parquet, columns: {question: problem, answer: solution}}

Where the rows come from (``path``):

- a local file: ``.parquet`` (pyarrow), ``.csv`` (a header row), ``.json`` (a list of objects, or
  JSON Lines), anything else read as JSON Lines through ``r1flow.data.io``;
- ``s3://bucket/key``, the same suffixes, through boto3. The endpoint comes from
  ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (boto3 reads them itself), credentials from the
  boto3 chain (environment, profile, role), never from the config; a 5 s connect timeout;
- ``hf://org/name``, a hub dataset: ``datasets.load_dataset("org/name", name, split=split,
  revision=revision)``; the split defaults to ``test`` (a benchmark never silently becomes its
  training split; a prompt set with only ``train`` says so when loaded). Access is the user's
  environment's (``HF_TOKEN``, ``HF_ENDPOINT``, ``HF_HOME``/``HF_DATASETS_CACHE``,
  ``HF_HUB_OFFLINE``); r1flow never passes or logs a token.
  Offline, ``datasets`` 5.x reads only its own Arrow cache
  (``HF_DATASETS_CACHE/org___name/<config>/0.0.0/<commit>/``, filled by one online load with the
  same ``HF_HOME``), not the hub's file cache (``HF_HUB_CACHE``), and ignores the revision there:
  a revision pinned as a full 40-hex commit is checked against the cached folder here.

Every failure is a ``DatasetError`` (a ``ValueError``) that names the source, and for a missing
column lists the columns the data has.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from r1flow.data.benchmarks import FORMATS
from r1flow.data.io import DatasetError, jsonl_lines, parse_row

log = logging.getLogger("r1flow.data")
HUB, S3 = "hf://", "s3://"
AUTO = "auto"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_HUB_ID = re.compile(r"[\w.\-]+/[\w.\-]+")
_S3_URI = re.compile(r"s3://([^/]+)/(.+)")


class Columns(BaseModel):
    """Which columns of the data hold the question, the answer and (optionally) an id."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field("question", description="column with the problem text")
    answer: str = Field("answer", description="column the gold is derived from (an answer or a solution)")
    id: str | None = Field(None, description="column with a stable problem id; None: '<name>-0000' by row")


class DataSource(BaseModel):
    """A problem set: where its rows are, which columns hold what, how the gold is derived."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="a local file (.jsonl, .json, .parquet, .csv), s3://bucket/key, or a hub "
                      "dataset hf://org/name")
    name: str | None = Field(None, description="hf:// only: the dataset's config (GSM8K: 'main')")
    split: str | None = Field(None, description="hf:// only: the split to read; None: 'test'")
    revision: str | None = Field(None, description="hf:// only: a pinned commit or tag of the dataset repo")
    columns: Columns = Field(default_factory=Columns, description="question/answer/id column names")
    format: str = Field(AUTO, description="how the gold comes from the answer column: 'gsm8k' (after "
                        "'####'), 'boxed' (the last \\boxed{}), 'plain' or 'math500' (as is), or 'auto' "
                        "(from the first row: '####' -> gsm8k, '\\boxed' -> boxed, else plain)")
    rows: int | None = Field(None, gt=0, description="read only the first N rows")
    skip_bad_rows: bool = Field(False, description="drop rows whose gold cannot be derived (a solution with "
                                "no \\boxed{}, an empty answer) instead of failing; the count is logged")

    @model_validator(mode="after")
    def _check(self) -> DataSource:
        if self.format != AUTO and self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; known: {[AUTO, *sorted(FORMATS)]}")
        if self.path.startswith(HUB):
            if not _HUB_ID.fullmatch(self.path[len(HUB):]):
                raise ValueError(f"{self.path!r}: a hub dataset is hf://org/name")
        else:
            hub_only = [f for f in ("name", "split", "revision") if getattr(self, f) is not None]
            if hub_only:
                raise ValueError(f"{', '.join(hub_only)}: only for hf:// datasets, not {self.path!r}")
        if self.path.startswith(S3) and not _S3_URI.fullmatch(self.path):
            raise ValueError(f"{self.path!r}: an S3 object is s3://bucket/key")
        return self

    @property
    def hub_split(self) -> str:
        return self.split or "test"

    def __str__(self) -> str:
        """``hf://openai/gsm8k:main@<rev>[test]``, else the path: what messages call this source."""
        if not self.path.startswith(HUB):
            return self.path
        config = f":{self.name}" if self.name else ""
        revision = f"@{self.revision}" if self.revision else ""
        return f"{self.path}{config}{revision}[{self.hub_split}]"


def _is_source(value: Any) -> str:
    return "str" if isinstance(value, str) else "source"


SourceSpec = Annotated[
    Annotated[str, Tag("str")] | Annotated[DataSource, Tag("source")], Discriminator(_is_source)
]
"""A config field's problem set: a string (``arith``, ``FORMAT=PATH``, a path) or a ``DataSource``."""


def as_source(spec: DataSource | Mapping[str, Any]) -> DataSource:
    """A ``DataSource`` from itself or its dict form (as stages get configs); invalid: DatasetError."""
    if isinstance(spec, DataSource):
        return spec
    try:
        return DataSource.model_validate(dict(spec))
    except ValidationError as err:
        where = spec.get("path", "?") if isinstance(spec, Mapping) else "?"
        problems = "; ".join(".".join(map(str, e["loc"])) + ": " * bool(e["loc"])
                             + e["msg"].removeprefix("Value error, ") for e in err.errors())
        raise DatasetError(f"{where}: invalid data source: {problems}") from None


def source_name(spec: DataSource | Mapping[str, Any]) -> str:
    """A short metric-safe name: hub ``<dataset>_<config>_<split>`` (``gsm8k_main_test``), a file
    ``<folder>_<stem>`` like a path string (``gsm8k_test``)."""
    src = as_source(spec)
    if src.path.startswith(HUB):
        raw = "_".join(p for p in (src.path.rsplit("/", 1)[1], src.name, src.hub_split) if p)
    else:
        path = Path(src.path.removeprefix(S3))
        raw = f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem
    return re.sub(r"[^\w.\-]+", "_", raw)


def load_source(spec: DataSource | Mapping[str, Any]) -> list[dict[str, str]]:
    """Rows ``{"id", "question", "answer"}`` of a source (at most ``rows``), gold per ``format``."""
    src = as_source(spec)
    records = _hub_records(src) if src.path.startswith(HUB) else _file_records(src)
    return _to_rows(src, records)


# --- reading records -------------------------------------------------------------------------------


def _file_records(src: DataSource) -> list[dict[str, Any]]:
    suffix = Path(src.path).suffix.lower()
    if src.path.startswith(S3):
        return _parse(_s3_bytes(src.path), suffix, src.path)
    path = Path(src.path).expanduser()
    if suffix in (".parquet", ".csv", ".json"):
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DatasetError(f"{src.path}: cannot read ({err.strerror or err})") from None
        return _parse(data, suffix, src.path)
    return [parse_row(text, {}, f"{path}:{n}") for n, text in jsonl_lines(path, "problem file")]


def _parse(data: bytes, suffix: str, where: str) -> list[dict[str, Any]]:
    """The records of a file's bytes, by its suffix; errors name ``where``."""
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            records = pq.read_table(io.BytesIO(data)).to_pylist()
        elif suffix == ".csv":
            records = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
        else:
            records = _json_records(data.decode("utf-8"), suffix, where)
    except UnicodeDecodeError as err:
        raise DatasetError(f"{where}: not UTF-8 ({err.reason} at byte {err.start})") from None
    except (OSError, ValueError, csv.Error) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"{where}: not a readable {suffix.lstrip('.') or 'JSONL'} file ({err})") from None
    if not records:
        raise DatasetError(f"{where}: empty problem file (no rows)")
    return records


def _json_records(text: str, suffix: str, where: str) -> list[dict[str, Any]]:
    """A JSON list of objects (``.json``), else JSON Lines (line-numbered errors)."""
    if suffix == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":  # "Extra data": several values, i.e. JSON Lines
                raise DatasetError(f"{where}: invalid JSON ({err.msg} at line {err.lineno})") from None
        else:
            if not isinstance(whole, list) or not all(isinstance(r, dict) for r in whole):
                raise DatasetError(f"{where}: expected a JSON list of objects or JSON Lines")
            return whole
    lines = enumerate(text.splitlines(), start=1)
    return [parse_row(line, {}, f"{where}:{n}") for n, line in lines if line.strip()]


def _s3_bytes(uri: str) -> bytes:
    """The object's bytes. Endpoint and credentials: boto3's own resolution (see the docstring)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = _S3_URI.fullmatch(uri).groups()
    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required", s3={"addressing_style": "path"})
    session = boto3.session.Session()
    client = session.client("s3", region_name=session.region_name or "us-east-1", config=config)
    endpoint = client.meta.endpoint_url
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "?")
        raise DatasetError(f"{uri}: S3 error {code} at {endpoint}") from None
    except BotoCoreError as err:  # unreachable endpoint, no credentials, a cut transfer
        raise DatasetError(f"{uri}: S3 at {endpoint}: {err}") from None


def _hub_records(src: DataSource) -> list[dict[str, Any]]:
    """The hub dataset's split, only the mapped columns, at most ``rows`` of them."""
    import datasets

    repo = src.path[len(HUB):]
    try:
        ds = datasets.load_dataset(repo, src.name, split=src.hub_split, revision=src.revision)
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds; each becomes one named error
        raise DatasetError(f"{src}: cannot load the hub dataset ({type(err).__name__}: {err})") from None
    _check_revision(src, ds)
    _check_columns(src, ds.column_names, str(src))
    if src.rows:
        ds = ds.select(range(min(src.rows, len(ds))))
    return ds.select_columns(_wanted(src)).to_list()


def _check_revision(src: DataSource, ds: Any) -> None:
    """A commit-pinned revision must be the one read: offline, ``datasets`` takes the newest cache."""
    if not (src.revision and _COMMIT.fullmatch(src.revision)):
        return
    folders = {Path(f["filename"]).parent.name for f in ds.cache_files}
    if folders and src.revision not in folders:
        raise DatasetError(f"{src}: the dataset read is revision {', '.join(sorted(folders))}, not the "
                           f"pinned {src.revision} (offline, datasets reads the newest cached revision)")


# --- records to rows -------------------------------------------------------------------------------


def _wanted(src: DataSource) -> list[str]:
    c = src.columns
    return [c.question, c.answer] + ([c.id] if c.id else [])


def _check_columns(src: DataSource, present: Iterable[str], where: str) -> None:
    present = list(present)
    for column in _wanted(src):
        if column not in present:
            raise DatasetError(f"{where}: missing column {column!r} (columns: {', '.join(present)})")


def _detect(src: DataSource, first: Mapping[str, Any]) -> str:
    if src.format != AUTO:
        return src.format
    answer = str(first.get(src.columns.answer, ""))
    return "gsm8k" if "####" in answer else "boxed" if "\\boxed" in answer else "plain"


def _to_rows(src: DataSource, records: list[dict[str, Any]]) -> list[dict[str, str]]:
    records = records[: src.rows] if src.rows else records
    if not records:
        raise DatasetError(f"{src}: no rows")
    gold, name, rows, skipped = FORMATS[_detect(src, records[0])].gold, source_name(src), [], 0
    for number, record in enumerate(records, start=1):
        where = f"{src}:{number}"
        _check_columns(src, record, where)
        try:
            rows.append(_row(src, record, gold, where, f"{name}-{len(rows):04d}"))
        except DatasetError:
            if not src.skip_bad_rows:
                raise
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d of %d rows whose gold could not be derived", src, skipped, len(records))
    if not rows:
        raise DatasetError(f"{src}: no usable rows")
    return rows


def _row(src: DataSource, record: Mapping[str, Any], gold, where: str, default_id: str) -> dict[str, str]:
    c = src.columns
    question, answer = _text(record[c.question], c.question, where), _text(record[c.answer], c.answer, where)
    if not question.strip():
        raise DatasetError(f"{where}: empty {c.question!r}")
    stored_id = record[c.id] if c.id else None
    return {"id": default_id if stored_id is None else str(stored_id), "question": question.strip(),
            "answer": gold(answer, where)}


def _text(value: Any, column: str, where: str) -> str:
    """A cell as text: strings as they are, numbers written out (``42``); anything else fails."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DatasetError(f"{where}: column {column!r} should be text or a number, got {type(value).__name__}")
