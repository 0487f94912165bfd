"""Evaluation math (pass@k, majority vote, lenient match) with hand values; evaluate_model on
real tiny models; benchmark loaders on real files and on malformed ones."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from r1flow.data.benchmarks import benchmark_name, load_benchmark
from r1flow.engine import HFEngine
from r1flow.evaluate import (aggregate, evaluate_model, lenient_match, majority_vote, normalize_answer,
                             pass_at_k, problem_metrics)
from r1flow.modeling import ModelArch, build_model, train_tokenizer
from r1flow.templates import render_prompt

SHARED_DATA = Path(os.environ.get("R1FLOW_SHARED_DATA", "/work/shared/data"))
ARCH = ModelArch(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
PROBLEMS = [  # a model that always answers 5 gets 3 of 4 right
    {"id": "a", "question": "Compute 2 + 3.", "answer": "5"},
    {"id": "b", "question": "Compute 1 + 4.", "answer": "5"},
    {"id": "c", "question": "Compute 3 + 3.", "answer": "6"},
    {"id": "d", "question": "Compute 9 - 4.", "answer": "5"},
]
ALWAYS_FIVE = " I add. </think> The answer is \\boxed{5}."



# --- pure math, hand-derived ---------------------------------------------------------------

def test_pass_at_k_hand_values():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # c/n
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(10, 1, 5) == pytest.approx(0.5)  # 1 - C(9,5)/C(10,5) = 1 - 126/252
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k: every 3-subset holds a correct one
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    for bad in [(4, 5, 1), (4, 1, 5), (4, 1, 0)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_majority_vote_hand_values():
    assert majority_vote(["3", "4", "4.0", None, "3"]) == "3"  # 2 vs 2: "3" seen first
    assert majority_vote(["5", "2,000", "2000.0"]) == "2000"  # spellings of one number vote together
    assert majority_vote(["b", "a"]) == "b"
    assert majority_vote(["$7$", "7", "8"]) == "7"
    assert majority_vote([None, None]) is None
    assert normalize_answer(" 16.0 ") == "16" and normalize_answer("0.50") == "0.5"
    assert normalize_answer("\\frac{1}{2}") == "\\frac{1}{2}"


def test_lenient_match():
    assert lenient_match("so she has 1,200 apples", "#### 1200")
    assert not lenient_match("<answer> 12 </answer> then 13", "12")  # the LAST number counts
    assert lenient_match("no tags, just 12.0", "12")
    assert not lenient_match("x = 1/2", "\\frac{1}{2}")  # non-numeric gold never matches leniently
    assert not lenient_match("no number", "3")


def test_problem_metrics_and_aggregate_hand_values():
    # answers 4,5,5,4: a 2-2 tie -> "4" (seen first) -> the first sample's correctness (0).
    p1 = problem_metrics([0.0, 1.0, 1.0, 0.0], ["4", "5", "5.0", "4"])
    assert p1 == {"pass_at_1": 0.5, "cons": 0.0}
    p2 = problem_metrics([1.0, 1.0, 0.0, 0.0], ["7", "7", None, None])  # None does not vote
    assert p2 == {"pass_at_1": 0.5, "cons": 1.0}
    per_problem = [dict(p1, lenient=0.75, n_correct=2), dict(p2, lenient=0.5, n_correct=2),
                   {"pass_at_1": 0.0, "cons": 0.0, "lenient": 0.0, "n_correct": 0}]
    samples = [{"format": f, "length": n, "finish_reason": r, "mixed_language": x}
               for f, n, r, x in [(1.0, 10, "stop", True), (0.0, 20, "length", False), (1.0, 30, "stop", False)] * 4]
    m = aggregate(per_problem, samples, k=4)
    assert m["pass_at_1"] == pytest.approx(1 / 3)
    # stderr: values 0.5, 0.5, 0 -> sample var = (1/36+1/36+4/36)/2 = 1/12; sqrt(1/12 / 3) = 1/6
    assert m["pass_at_1_stderr"] == pytest.approx(1 / 6)
    assert m["cons_at_4"] == pytest.approx(1 / 3)
    assert m["lenient_pass_at_1"] == pytest.approx(1.25 / 3)
    assert m["pass_at_2"] == pytest.approx((5 / 6 + 5 / 6 + 0) / 3)  # 1 - C(2,2)/C(4,2) = 5/6
    assert m["pass_at_4"] == pytest.approx(2 / 3)
    assert m["format_rate"] == pytest.approx(2 / 3) and m["mean_length"] == pytest.approx(20)
    assert m["truncated_rate"] == pytest.approx(1 / 3) and m["num_problems"] == 3
    assert m["mixed_language_rate"] == pytest.approx(1 / 3)


# --- evaluate_model on real tiny models ----------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    texts = [render_prompt(p["question"], "r1") + ALWAYS_FIVE for p in PROBLEMS] * 10
    return train_tokenizer(texts, 300)


def test_evaluate_model_random_model_returns_every_metric(tokenizer):
    engine = HFEngine(build_model(ARCH, tokenizer, seed=0), tokenizer, batch_size=8)
    kw = dict(template="r1_zero", k=3, max_new_tokens=16, seed=0, batch_size=3)
    result = evaluate_model(engine, PROBLEMS, **kw)
    expected = {"pass_at_1", "pass_at_1_stderr", "cons_at_3", "pass_at_2", "pass_at_3", "lenient_pass_at_1",
                "format_rate", "mixed_language_rate", "mean_length", "truncated_rate", "num_problems",
                    "grading_timeouts"}
    assert set(result.metrics) == expected
    assert all(0.0 <= result.metrics[key] <= 1.0 for key in expected - {"mean_length", "num_problems",
                                                                          "grading_timeouts"})
    assert 0 < result.metrics["mean_length"] <= 16 and result.metrics["num_problems"] == 4
    assert len(result.samples) == 12 and [s["id"] for s in result.samples[:4]] == ["a", "a", "a", "b"]
    assert evaluate_model(engine, PROBLEMS, **kw).metrics == result.metrics  # seeded


def test_sharded_evaluation_scores_the_samples_of_an_unsharded_one(tokenizer, tmp_path):
    """Batches saved as chunks (``r1flow.chunks``, a real local store): shard 2 of 2 then shard 1
    of 2 generate only their batches and score nothing; the run after them reuses all four and
    gives the samples and metrics of a run that never saved or split anything."""
    from r1flow.chunks import ChunkLog
    from r1flow.store_local import LocalStore

    engine = HFEngine(build_model(ARCH, tokenizer, seed=0), tokenizer, batch_size=8)
    problems = [{**p, "id": f"{p['id']}{i}"} for i in range(2) for p in PROBLEMS]
    kw = dict(template="r1_zero", k=3, max_new_tokens=16, seed=0, batch_size=2)
    straight = evaluate_model(engine, problems, **kw)
    chunks = ChunkLog(LocalStore(tmp_path), "checkpoints/evaluation/k/eval-x")
    assert evaluate_model(engine, problems, chunks=chunks, shard=(1, 2), **kw) is None
    assert sorted(p.name for p in (tmp_path / "checkpoints/evaluation/k/eval-x/chunks").iterdir()) == \
        ["chunk-000001", "chunk-000003"]
    assert evaluate_model(engine, problems, chunks=chunks, shard=(0, 2), **kw) is None
    merged = evaluate_model(HFEngine(build_model(ARCH, tokenizer, seed=1), tokenizer), problems, chunks=chunks, **kw)
    assert chunks.loaded == 4  # another model's engine: had it generated anything, the samples would differ
    assert merged.samples == straight.samples and merged.metrics == straight.metrics


def test_evaluate_model_scores_a_model_that_always_answers_five(tokenizer):
    """Teach a tiny model one completion, then check every metric against the hand count."""
    torch.manual_seed(0)
    model = build_model(ARCH, tokenizer, seed=0)
    eos = tokenizer.eos_token
    prompt_ids = [tokenizer(render_prompt(p["question"], "r1"))["input_ids"] for p in PROBLEMS]
    completion = tokenizer(ALWAYS_FIVE + eos)["input_ids"]
    rows = [p + completion for p in prompt_ids]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    labels = torch.tensor([[-100] * len(p) + completion + [-100] * (width - len(p) - len(completion))
                           for p in prompt_ids])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    result = evaluate_model(HFEngine(model, tokenizer, batch_size=16), PROBLEMS, template="r1", k=4,
                            max_new_tokens=32, seed=1, batch_size=2)
    m = result.metrics
    assert m["pass_at_1"] == pytest.approx(0.75) and m["cons_at_4"] == pytest.approx(0.75)
    assert m["pass_at_4"] == pytest.approx(0.75) and m["lenient_pass_at_1"] == pytest.approx(0.75)
    assert m["pass_at_1_stderr"] == pytest.approx(0.25)  # sqrt(var([1,1,0,1], ddof=1) / 4)
    assert m["format_rate"] == 1.0 and m["truncated_rate"] == 0.0
    assert m["mean_length"] == pytest.approx(len(completion))  # EOS included
    assert {s["extracted"] for s in result.samples} == {"5"}
    assert [s["correct"] for s in result.samples if s["id"] == "c"] == [0.0] * 4


# --- benchmark loaders -----------------------------------------------------------------------

def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("rows, where, message", [
    ([{"question": "q", "answer": "1"}, {"question": "q"}], ":2", "missing field 'answer'"),
    ([{"question": "q", "answer": "1"}, "", {"question": "q", "answer": 3}], ":3", "should be str"),
    ([{"question": "q", "answer": "1"}, "{not json"], ":2", "invalid JSON"),
    ([{"problem": "p", "answer": "1"}, {"question": "q", "answer": "1"}], ":2", "missing field 'problem'"),
    ([{"question": "q", "answer": "x\n#### 3"}, {"question": "q", "answer": "3"}], ":2", "####"),
    ([{"question": " ", "answer": "1"}], ":1", "empty 'question'"),
])
def test_loader_errors_name_file_and_line(tmp_path, rows, where, message):
    path = _write(tmp_path / "bench.jsonl", rows)
    with pytest.raises(ValueError, match=message) as err:
        load_benchmark(path)
    assert f"{path}{where}:" in str(err.value)


def test_loader_empty_or_missing_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=f"{empty}: empty"):
        load_benchmark(empty)
    with pytest.raises(ValueError, match="no such file"):
        load_benchmark(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match="local JSONL file: pass its path"):
        load_benchmark("gsm8k")
    with pytest.raises(ValueError, match="missing field 'problem'"):  # the prefix forces the format
        load_benchmark(f"math500={_write(tmp_path / 'q.jsonl', [{'question': 'q', 'answer': '1'}])}")
    with pytest.raises(ValueError, match="unknown benchmark format"):
        load_benchmark(_write(tmp_path / "ok.jsonl", [{"question": "q", "answer": "1"}]), fmt="aime")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared benchmark data not present")
def test_load_real_gsm8k_and_math500():
    gsm = load_benchmark(SHARED_DATA / "gsm8k" / "test.jsonl")
    assert len(gsm) == 1319 and gsm[0]["answer"] == "18" and gsm[0]["question"].startswith("Janet’s ducks")
    assert all(r["answer"].lstrip("-").isdigit() for r in gsm)  # "#### 2,125" -> "2125"
    assert sum(r["answer"].startswith("-") for r in gsm) == 2
    assert len({r["id"] for r in gsm}) == 1319 and benchmark_name(SHARED_DATA / "gsm8k" / "test.jsonl") == "gsm8k_test"
    math500 = load_benchmark(SHARED_DATA / "math500" / "test.jsonl")
    assert len(math500) == 500 and set(math500[0]) == {"id", "question", "answer"}
    assert math500[0] == {"id": "test/precalculus/807.json",
                          "question": math500[0]["question"], "answer": "\\left( 3, \\frac{\\pi}{2} \\right)"}
    assert math500[0]["question"].startswith("Convert the point $(0,3)$")
    spec = f"gsm8k={SHARED_DATA / 'gsm8k' / 'test.jsonl'}"  # the config's FORMAT=PATH form
    assert load_benchmark(spec) == gsm and benchmark_name(spec) == "gsm8k_test"
    cmath = load_benchmark(SHARED_DATA / "cmath" / "test.jsonl")
    assert len(cmath) == 600 and cmath[0]["answer"] == "9"


def test_load_arith_heldout():
    rows = load_benchmark("arith_heldout")
    assert rows and set(rows[0]) == {"id", "question", "answer"}
    assert all(r["answer"].lstrip("-").isdigit() for r in rows)
    assert math.isclose(len({r["id"] for r in rows}), len(rows))
