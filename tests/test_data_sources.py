"""DataSource: problem sets from local files of any shape, a real S3 endpoint and the hub, offline.

Everything here reads the real benchmark files of shared/data (GSM8K, MATH-500, CMATH) or copies
of them in other containers (parquet, CSV, JSON, an S3 object served by moto_server on loopback, a
hub dataset in the offline cache of ``datasets``), and checks the rows equal what the existing
``FORMAT=PATH`` loader gives. Nothing is fetched from the internet.

The hub case: offline, ``datasets`` 5.x never looks at the hub's file cache (``HF_HUB_CACHE``,
``datasets--org--name/snapshots/<sha>/``): ``load_dataset("openai/gsm8k", ...)`` raises at once
that it cannot reach the hub, then falls back to its own Arrow cache,
``HF_DATASETS_CACHE/openai___gsm8k/main/0.0.0/<commit>/{dataset_info.json, gsm8k-test.arrow}``,
which one online load writes. ``hub_cache`` writes that folder with the Parquet builder of
``datasets`` itself from a parquet file of the real GSM8K rows.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from r1flow.data.benchmarks import benchmark_name, load_benchmark
from r1flow.data.io import DatasetError
from r1flow.data.sources import DataSource, load_source, source_name
from tests.s3server import DUMMY_AWS_ENV, create_bucket, dummy_aws_env, moto_server

SHARED = Path(os.environ.get("R1FLOW_SHARED_DATA", "/work/shared/data"))
GSM8K, MATH500 = SHARED / "gsm8k" / "test.jsonl", SHARED / "math500" / "test.jsonl"
CMATH = SHARED / "cmath" / "test.jsonl"
MATH500_COLUMNS = {"question": "problem", "answer": "answer", "id": "unique_id"}
COMMIT = "e53f048856ff4f594e959d75785d2c2d37b678ee"  # a hub-style commit id: the cache folder's name
HUB_ROWS = 40
BUCKET = "r1flow-data"

pytestmark = pytest.mark.skipif(not GSM8K.is_file(), reason="shared benchmark data not present")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _qa(rows: list[dict]) -> list[tuple[str, str]]:
    return [(r["question"], r["answer"]) for r in rows]


# --- local files -----------------------------------------------------------------------------------


def test_real_files_through_a_column_mapping_equal_the_format_loader():
    math500 = load_source(DataSource(path=str(MATH500), columns=MATH500_COLUMNS))
    assert math500 == load_benchmark(f"math500={MATH500}")
    assert len(math500) == 500 and math500[0]["id"] == "test/precalculus/807.json"
    assert math500[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    gsm8k = load_benchmark({"path": str(GSM8K), "format": "gsm8k"})  # the dict form, as stages get it
    assert gsm8k == load_benchmark(f"gsm8k={GSM8K}") == load_source({"path": str(GSM8K)})  # auto: '####'
    assert len(gsm8k) == 1319 and gsm8k[0]["answer"] == "18" and gsm8k[0]["id"] == "gsm8k_test-0000"
    assert sum("," in r["answer"] for r in gsm8k) == 0  # '#### 2,125' -> '2125'
    cmath = load_source({"path": str(CMATH)})
    assert cmath == load_benchmark(str(CMATH)) and len(cmath) == 600
    assert cmath[0]["question"].startswith("芳芳买了一本书有99页")


def test_boxed_gold_of_real_math500_solutions_equals_their_answer_column():
    boxed = load_source({"path": str(MATH500), "format": "boxed",
                         "columns": {"question": "problem", "answer": "solution", "id": "unique_id"}})
    answers = load_benchmark(f"math500={MATH500}")
    assert [r["id"] for r in boxed] == [r["id"] for r in answers]
    same = sum(b["answer"] == a["answer"] for b, a in zip(boxed, answers))
    assert same == 500, [(b["answer"], a["answer"]) for b, a in zip(boxed, answers) if b != a]
    nested = next(r for r in boxed if r["id"] == "test/precalculus/807.json")
    assert nested["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"  # nested braces inside \boxed{}
    auto = load_source({"path": str(MATH500), "columns": {"question": "problem", "answer": "solution"}})
    assert _qa(auto) == _qa(boxed)  # 'auto' sees '\boxed' in the first solution


def test_a_solution_without_a_box_fails_named_or_is_skipped(tmp_path, caplog):
    rows = _records(MATH500)[:3]
    rows[1]["solution"] = "This is a proof; there is no final answer to box."
    path = tmp_path / "numina" / "train.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"path": str(path), "format": "boxed", "columns": {"question": "problem", "answer": "solution"}}
    with pytest.raises(DatasetError, match=rf"{path}:2: no complete non-empty \\boxed"):
        load_source(spec)
    kept = load_source({**spec, "skip_bad_rows": True})
    assert [r["question"] for r in kept] == [rows[0]["problem"], rows[2]["problem"]]
    assert "skipped 1 of 3 rows" in caplog.text


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json", ".jsonl"])
def test_the_same_rows_from_parquet_csv_and_json(tmp_path, suffix):
    records = _records(MATH500)
    path = tmp_path / "math500" / f"test{suffix}"
    path.parent.mkdir()
    _write(path, records)
    rows = load_source({"path": str(path), "columns": MATH500_COLUMNS})
    assert rows == load_benchmark(f"math500={MATH500}")
    assert source_name({"path": str(path)}) == benchmark_name(f"math500={MATH500}") == "math500_test"
    assert load_source({"path": str(path), "columns": MATH500_COLUMNS, "rows": 7}) == rows[:7]


def _write(path: Path, records: list[dict]) -> None:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    elif path.suffix == ".json":
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def test_missing_column_and_missing_file_are_named(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_source({"path": str(MATH500)})  # default columns question/answer; MATH-500 has 'problem'
    assert str(err.value) == (f"{MATH500}:1: missing column 'question' "
                              "(columns: problem, solution, answer, subject, level, unique_id)")
    parquet = tmp_path / "math500.parquet"
    _write(parquet, _records(MATH500)[:5])
    with pytest.raises(DatasetError, match=r"missing column 'id_x' \(columns: problem, solution, answer"):
        load_source({"path": str(parquet), "columns": {**MATH500_COLUMNS, "id": "id_x"}})
    for missing in (tmp_path / "none.jsonl", tmp_path / "none.parquet"):
        with pytest.raises(DatasetError, match=str(missing)):
            load_source({"path": str(missing)})
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match=f"{broken}: not a readable parquet file"):
        load_source({"path": str(broken)})


def test_invalid_sources_are_refused_before_loading():
    for spec, message in (({"path": "hf://gsm8k"}, "hf://org/name"),
                          ({"path": str(GSM8K), "split": "train"}, "split: only for hf://"),
                          ({"path": str(GSM8K), "format": "latex"}, "unknown format 'latex'"),
                          ({"path": "s3://bucket-only"}, "s3://bucket/key"),
                          ({"path": str(GSM8K), "colums": {}}, "colums")):
        with pytest.raises(DatasetError, match=message) as err:
            load_benchmark(spec)
        assert "invalid data source" in str(err.value)


# --- S3 -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3 endpoint (moto_server on loopback) holding MATH-500 as JSONL and as parquet."""
    import boto3

    with moto_server() as server, dummy_aws_env():
        create_bucket(server.endpoint_url, BUCKET)
        client = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1")
        client.upload_file(str(MATH500), BUCKET, "benchmarks/math500/test.jsonl")
        client.upload_file(str(GSM8K), BUCKET, "benchmarks/gsm8k/test.jsonl")
        yield server.endpoint_url


@pytest.fixture
def aws_env(monkeypatch):
    for key, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize("endpoint_variable", ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
def test_an_s3_object_through_the_endpoint_of_the_environment(s3_endpoint, aws_env, endpoint_variable):
    aws_env.setenv(endpoint_variable, s3_endpoint)
    uri = f"s3://{BUCKET}/benchmarks/math500/test.jsonl"
    rows = load_benchmark({"path": uri, "columns": MATH500_COLUMNS})
    assert rows == load_benchmark(f"math500={MATH500}")
    assert benchmark_name({"path": uri}) == "math500_test"
    gsm8k = load_source({"path": f"s3://{BUCKET}/benchmarks/gsm8k/test.jsonl", "format": "gsm8k", "rows": 5})
    assert gsm8k == load_benchmark(f"gsm8k={GSM8K}")[:5]


def test_an_s3_parquet_object(s3_endpoint, aws_env, tmp_path):
    import boto3

    aws_env.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    parquet = tmp_path / "test.parquet"
    _write(parquet, _records(GSM8K))
    boto3.client("s3", region_name="us-east-1").upload_file(str(parquet), BUCKET, "gsm8k/test.parquet")
    rows = load_source({"path": f"s3://{BUCKET}/gsm8k/test.parquet", "format": "gsm8k"})
    assert rows == load_benchmark(f"gsm8k={GSM8K}")


def test_missing_s3_objects_and_a_dead_endpoint_are_named(s3_endpoint, aws_env):
    from tests.s3server import free_port

    aws_env.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    for uri, code in ((f"s3://{BUCKET}/benchmarks/none.jsonl", "NoSuchKey"),
                      ("s3://no-bucket/x.jsonl", "NoSuchBucket")):
        with pytest.raises(DatasetError, match=f"{uri}: S3 error {code} at {s3_endpoint}"):
            load_source({"path": uri})
    dead = f"http://127.0.0.1:{free_port()}"
    aws_env.setenv("AWS_ENDPOINT_URL_S3", dead)
    with pytest.raises(DatasetError, match=f"s3://{BUCKET}/benchmarks/math500/test.jsonl: S3 at {dead}"):
        load_source({"path": f"s3://{BUCKET}/benchmarks/math500/test.jsonl"})


# --- the hub, offline ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """An HF_DATASETS_CACHE holding ``openai/gsm8k`` config ``main`` split ``test`` at ``COMMIT`` (the
    first ``HUB_ROWS`` real GSM8K test rows), written by datasets' own Parquet builder."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.packaged_modules.parquet.parquet import Parquet

    root = tmp_path_factory.mktemp("hf")
    parquet = root / "repo" / "main" / "test-00000-of-00001.parquet"
    parquet.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(_records(GSM8K)[:HUB_ROWS]), parquet)
    builder = Parquet(cache_dir=str(root / "build"), dataset_name="gsm8k", config_name="main",
                      config_id="main", hash=COMMIT, data_files={"test": str(parquet)})
    builder.download_and_prepare()
    cache = root / "datasets"
    cache.mkdir()
    shutil.move(root / "build" / "gsm8k", cache / "openai___gsm8k")  # where a load of openai/gsm8k writes it
    assert (cache / "openai___gsm8k" / "main" / "0.0.0" / COMMIT / "gsm8k-test.arrow").is_file()
    return cache


@pytest.fixture
def offline_hub(hub_cache, monkeypatch, tmp_path):
    """The hub offline with ``hub_cache`` as the datasets cache, for this test only. ``datasets`` reads
    these variables when imported, so its ``config`` module is patched as well."""
    import datasets.config

    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(hub_cache),
           "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": str(tmp_path / "hf-home" / "hub")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hub_cache)
    return env


GSM8K_HUB = {"path": "hf://openai/gsm8k", "name": "main", "split": "test", "revision": COMMIT,
             "format": "gsm8k"}


def test_a_hub_dataset_offline_from_the_datasets_cache(offline_hub):
    import datasets

    raw = datasets.load_dataset("openai/gsm8k", "main", split="test", revision=COMMIT)
    assert raw.num_rows == HUB_ROWS and raw[0] == _records(GSM8K)[0]
    rows = load_benchmark(GSM8K_HUB)
    assert _qa(rows) == _qa(load_benchmark(f"gsm8k={GSM8K}")[:HUB_ROWS])
    assert benchmark_name(GSM8K_HUB) == "gsm8k_main_test" and rows[0]["id"] == "gsm8k_main_test-0000"
    assert load_source({**GSM8K_HUB, "rows": 3}) == rows[:3]
    assert _qa(load_source({"path": "hf://openai/gsm8k", "name": "main"})) == _qa(rows)  # split: 'test'
    assert str(DataSource(**GSM8K_HUB)) == f"hf://openai/gsm8k:main@{COMMIT}[test]"


def test_hub_failures_name_the_source(offline_hub):
    with pytest.raises(DatasetError, match=r"hf://nobody/nothing\[test\]: cannot load the hub dataset.*"
                                           r"Couldn't reach 'nobody/nothing'"):
        load_source({"path": "hf://nobody/nothing"})
    with pytest.raises(DatasetError, match=r"gsm8k:main\[train\]: .*Unknown split \"train\". "
                                           r"Should be one of \['test'\]"):
        load_source({"path": "hf://openai/gsm8k", "name": "main", "split": "train"})
    with pytest.raises(DatasetError, match=r"missing column 'problem' \(columns: question, answer\)"):
        load_source({**GSM8K_HUB, "columns": {"question": "problem"}})
    other = "0" * 40
    with pytest.raises(DatasetError, match=f"revision {COMMIT}, not the pinned {other}"):
        load_source({**GSM8K_HUB, "revision": other})


def test_a_fresh_process_reads_the_hub_cache_from_its_environment(hub_cache, tmp_path):
    """The user's way: environment variables only, read by ``datasets`` when it is imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "home"), HF_DATASETS_CACHE=str(hub_cache))
    code = ("import json, sys; from r1flow.data.benchmarks import load_benchmark; "
            "print(json.dumps(load_benchmark(json.loads(sys.argv[1]))))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(GSM8K_HUB)], env=env, capture_output=True,
                         text=True, timeout=120, check=False, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _qa(json.loads(out.stdout)) == _qa(load_benchmark(f"gsm8k={GSM8K}")[:HUB_ROWS])


# --- config round trip and preflight ---------------------------------------------------------------


def test_config_round_trip_and_preflight(offline_hub, tmp_path):
    from r1flow.config import ConfigError, load_config, validate
    from r1flow.preflight import preflight
    from r1flow.stages.common import problems

    math500 = f"{{path: '{MATH500}', columns: {{question: problem, id: unique_id}}, rows: 20}}"
    hub = f"{{path: 'hf://openai/gsm8k', name: main, revision: '{COMMIT}', format: gsm8k}}"
    config = load_config("micro", sets=[f"evaluate.benchmarks=[arith_heldout, {math500}, {hub}]",
                                        f"rejection_sampling.prompts={hub}",
                                        f"r1_zero.prompts=[{{source: {math500}}}]"])
    assert config.evaluate.benchmarks[0] == "arith_heldout"
    assert isinstance(config.evaluate.benchmarks[1], DataSource)
    dumped = config.model_dump(mode="json")
    assert validate(json.loads(json.dumps(dumped))) == config
    benches = dumped["evaluate"]["benchmarks"]
    assert load_benchmark(benches[1]) == load_benchmark(f"math500={MATH500}")[:20]
    assert _qa(load_benchmark(benches[2])) == _qa(load_benchmark(f"gsm8k={GSM8K}")[:HUB_ROWS])
    assert [benchmark_name(b) for b in benches] == ["arith_heldout", "math500_test", "gsm8k_main_test"]
    prompts = dumped["rejection_sampling"]["prompts"]
    assert problems(None, prompts, 4, seed=0) == load_benchmark(benches[2])[:4]
    preflight(config, str(tmp_path / "store"))
    bad = load_config("micro", sets=["evaluate.benchmarks=[arith_heldout, {path: 'hf://nobody/nothing'}]"])
    with pytest.raises(ConfigError, match=r"^evaluate\.benchmarks\.1: hf://nobody/nothing\[test\]: "
                                          r"cannot load"):
        preflight(bad, str(tmp_path / "store"))
    bad = load_config("micro", sets=[f"r1_zero.prompts=[{{source: {{path: '{MATH500}'}}}}]"])
    with pytest.raises(ConfigError, match=r"^r1_zero\.prompts\.0\.source: .*missing column 'question'"):
        preflight(bad, str(tmp_path / "store"), ("r1_zero",))
    with pytest.raises(ConfigError, match=r"evaluate\.benchmarks\.0\.source: .*split: only for hf://"):
        load_config("micro", sets=[f"evaluate.benchmarks=[{{path: '{GSM8K}', split: test}}]"])
