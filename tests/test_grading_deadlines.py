"""Curation and rejection sampling grade answers under the rewards' deadline, never in-process.

``\\boxed{9^{9^{9^{9}}}}`` keeps sympy busy for ever (``test_reward_deadlines``): graded in-process
it would hang the cold-start or rejection-sampling stage. Here it must time out in a grading
worker, count as incorrect and be counted in ``grading_timeouts``, while correct rows are kept.
Everything runs off the main thread, as Prefect runs stage tasks.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from r1flow.data.curate import CurationParams, RejectionParams, curate, rejection_filter
from r1flow.data.filters import CorrectAnswer
from r1flow.data.io import write_jsonl
from r1flow.rewards import accuracy, get_reward
from r1flow.templates import render_prompt

TOWER = "9^{9^{9^{9}}}"  # math-verify never returns on it
SHORT = 1.0  # seconds per graded answer


def zero(reasoning: str, answer: str) -> str:
    return f" <think> {reasoning} </think> <answer> {answer} </answer>"


def r1(reasoning: str, answer: str) -> str:
    return f" {reasoning} </think> The answer is \\boxed{{{answer}}}."


def source_rows() -> list[dict[str, str]]:
    """Cold-start rows (R1-Zero template): two correct, the tower, one plainly wrong."""
    return [
        {"question": "Compute 3 + 4", "answer": "7", "completion": zero("3 plus 4 is 7.", "7")},
        # kept: not an integer, so a pool worker grades it
        {"question": "Halve one", "answer": "\\frac{1}{2}",
         "completion": zero("one over two.", "\\frac{1}{2}")},
        {"question": "Compute a tower", "answer": "5", "completion": zero("a tower of nines.", TOWER)},
        {"question": "Compute 5 + 6", "answer": "11", "completion": zero("5 plus 6 is 12.", "12")},
    ]


def samples() -> list[dict[str, str]]:
    """Rejection samples (R1 template), the same four cases."""
    def sample(question: str, answer: str, completion: str) -> dict[str, str]:
        return {"question": question, "answer": answer, "completion": completion, "finish_reason": "stop",
                "template": "r1"}

    return [sample("Compute 3 + 4", "7", r1("3 plus 4 is 7.", "7")),
            sample("Halve one", "\\frac{1}{2}", r1("one over two.", "\\frac{1}{2}")),
            sample("Compute a tower", "5", r1("a tower of nines.", TOWER)),
            sample("Compute 5 + 6", "11", r1("5 plus 6 is 12.", "12"))]


def off_main_thread(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a worker thread, and the seconds it took."""
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as executor:
        out = executor.submit(fn, *args, **kwargs).result()
    return out, time.monotonic() - start


@pytest.mark.timeout(60)  # graded in-process, the tower would hang here for ever
def test_curation_times_out_the_tower_and_drops_it_as_incorrect(pool):
    pool.score(accuracy, [" x </think> \\frac{1}{2}"], ["\\frac{1}{2}"], 30.0)  # workers up: time grading
    params = CurationParams(grading_timeout_s=SHORT)
    (examples, counts), elapsed = off_main_thread(curate, source_rows(), [], params, pool=pool)
    assert [e["prompt"] for e in examples] == [render_prompt(q, "r1") for q in ("Compute 3 + 4", "Halve one")]
    assert counts["incorrect"] == 2 and counts.grading_timeouts == 1
    assert len(source_rows()) == len(examples) + sum(counts.values())  # a timeout is one removal
    assert elapsed < 8.0, elapsed


@pytest.mark.timeout(60)
def test_rejection_filter_times_out_the_tower_and_drops_it_as_incorrect(pool):
    params = RejectionParams(grading_timeout_s=SHORT)
    (examples, counts), elapsed = off_main_thread(rejection_filter, samples(), params, pool=pool)
    assert [e["completion"] for e in examples] == [s["completion"] for s in samples()[:2]]
    assert counts["incorrect"] == 2 and counts.grading_timeouts == 1
    assert elapsed < 8.0, elapsed


@pytest.mark.timeout(60)
def test_correct_answer_check_keeps_the_answer_format(pool):
    """"r1" reads the answer after ``</think>``; "boxed" the last ``\\boxed{}`` anywhere."""
    plain = {"completion": "2 + 3 = 5. The answer is \\boxed{5}.", "answer": "5"}
    tower = {"completion": f"So it is \\boxed{{{TOWER}}}.", "answer": "5"}
    boxed = CorrectAnswer(timeout_s=SHORT, answer_format="boxed", pool=pool)
    assert CorrectAnswer(timeout_s=SHORT, pool=pool).batch([plain, tower]) == [False, False]  # no </think>
    assert boxed.batch([plain, tower]) == [True, False] and boxed.timeouts == 1
    assert boxed(plain) is True
    as_reward = get_reward("accuracy", timeout_s=SHORT, pool=pool, answer_format="boxed")  # RL reward specs
    assert as_reward([plain["completion"]], ["5"]) == [1.0]
    inside = {**samples()[0], "completion": " 3 plus 4 is \\boxed{7}. </think> Done."}
    kept, counts = rejection_filter([inside], RejectionParams(answer_format="boxed"), pool=pool)
    assert len(kept) == 1 and counts["incorrect"] == 0
    kept, counts = rejection_filter([inside], RejectionParams(), pool=pool)  # "r1": nothing after </think>
    assert kept == [] and counts["incorrect"] == 1


@pytest.mark.timeout(120)
def test_a_cold_start_stage_logs_its_grading_timeouts(tmp_path, capsys):
    """The cold-start stage run for real (``run_spec``, a local store, a tiny base) on a file holding
    the tower: it finishes, keeps the two correct rows and logs one grading timeout."""
    from r1flow.config import load_config
    from r1flow.events import parse
    from r1flow.modeling import ModelArch, build_model, save_model, train_tokenizer
    from r1flow.stages.runner import StageSpec, run_spec
    from r1flow.store import open_store

    tok = train_tokenizer([row["completion"] for row in source_rows()] * 10, 300)
    save_model(build_model(ModelArch(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                     intermediate_size=64), tok), tok, tmp_path / "base" / "teacher")
    store = open_store(str(tmp_path / "store"))
    base = store.put_dir(tmp_path / "base", "artifacts/base/t", meta={"stage": "base"})
    path = write_jsonl(tmp_path / "long_cot.jsonl", source_rows())
    cfg = load_config("micro", sets=[f"cold_start.sources=[{path}]", "cold_start.train={max_steps: 1, batch_size: 2}",
                                     f"cold_start.curation.grading_timeout_s={SHORT}"])
    runtime = {**cfg.shared(), "evaluate": {**cfg.evaluate.model_dump(), "max_problems": 1, "k": 1,
                                            "max_new_tokens": 2}}
    ref = run_spec(StageSpec(stage="cold_start", config=cfg.cold_start.model_dump(mode="json"), runtime=runtime,
                             inputs={"base": base}, output_key="artifacts/cold_start/t",
                             store_root=str(tmp_path / "store"), work_root=str(tmp_path / "work")))
    events = [e["values"] for e in map(parse, capsys.readouterr().out.splitlines())
              if e and e["event"] == "metrics" and "grading_timeouts" in e["values"]]
    assert events[-1]["grading_timeouts"] == 1 and events[-1]["kept"] == 2
    assert len((store.local_path(ref.uri) / "sft.jsonl").read_text().splitlines()) == 2
