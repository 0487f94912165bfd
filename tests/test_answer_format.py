"""Answer formats (r1flow.rewards.parsing, r1flow.templates): "r1" grades what follows ``</think>``,
"boxed" the whole completion's last ``\\boxed{}`` (plain chain-of-thought models, paper §3 evaluation
setup). Checked on the real GSM8K and MATH-500 files, through the accuracy reward, the grading pool and
evaluate_model. Every expected value is derived by hand from the completion written in the test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from r1flow.data.benchmarks import load_benchmark
from r1flow.engine import Rollouts
from r1flow.evaluate import evaluate_model
from r1flow.rewards import AccuracyReward, GradingPool, accuracy, extract_answer, quick_accuracy
from r1flow.rewards.correctness import boxed_accuracy, grader
from r1flow.rewards.parsing import boxed_answer, check_answer_format, resolve_answer_format
from r1flow.templates import (
    ANSWER_FORMATS,
    TEMPLATES,
    default_answer_format,
    prefills_think,
    r1_completion,
    r1_zero_completion,
    render_prompt,
)

SHARED_DATA = Path(os.environ.get("R1FLOW_SHARED_DATA", "/work/shared/data"))
MATH500 = SHARED_DATA / "math500" / "test.jsonl"
GSM8K = SHARED_DATA / "gsm8k" / "test.jsonl"
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared benchmark data not present")
DIRECTIVE = "Please reason step by step, and put your final answer within \\boxed{}."
WRONG = "1000003"  # a prime that is no gold below


def _rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _plain_cot(answer: str) -> str:
    return f"Let me think... so the final answer is \\boxed{{{answer}}}."


# --- templates and format names ----------------------------------------------------------------

def test_boxed_template_is_plain_text_with_the_evaluation_directive():
    assert render_prompt("What is 2 + 3?", "boxed") == "What is 2 + 3?\n" + DIRECTIVE
    assert not prefills_think("boxed") and prefills_think("r1") and not prefills_think("r1_zero")
    assert {t: default_answer_format(t) for t in TEMPLATES} == {"r1_zero": "r1", "r1": "r1", "boxed": "boxed",
                                                                "chat": "boxed"}
    with pytest.raises(ValueError, match="unknown template 'chatml'"):
        default_answer_format("chatml")


def test_resolve_answer_format():
    assert ANSWER_FORMATS == ("r1", "boxed")
    assert [resolve_answer_format("auto", t) for t in ("r1_zero", "r1", "boxed")] == ["r1", "r1", "boxed"]
    assert resolve_answer_format("r1", "boxed") == "r1" and resolve_answer_format("boxed", "r1") == "boxed"
    for bad in ("auto", "latex", ""):  # "auto" needs a template: the graders take only a concrete format
        with pytest.raises(ValueError, match="unknown answer format"):
            check_answer_format(bad)
    with pytest.raises(ValueError, match="unknown answer format 'latex'"):
        accuracy("\\boxed{5}", "5", "latex")
    with pytest.raises(ValueError, match="unknown answer format 'auto'"):
        AccuracyReward(answer_format="auto")
    assert grader("r1") is accuracy and grader("boxed") is boxed_accuracy


# --- extraction, hand cases --------------------------------------------------------------------

@pytest.mark.parametrize("completion, expected", [
    ("so x = \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),                        # nested braces
    ("\\boxed{\\sqrt{\\frac{1}{4}}} hence", "\\sqrt{\\frac{1}{4}}"),           # two levels
    ("first \\boxed{3}, then \\boxed{4}", "4"),                               # the last one
    ("first \\boxed{3}, then \\boxed{4", "3"),                                # last one cut short: skipped
    ("only \\boxed{12", None),                                                # a box, none complete
    ("empty \\boxed{} box", None),
    ("She pays 1,234 dollars, not 5 less. Total: 1,234.", "1234"),            # no box: the last number
    ("no answer here", None),
    ("\\boxed{$5$}", "5"),                                                    # cleaned like every answer
    ("<think> 2 + 2 = 5 </think> so \\boxed{4}", "4"),                        # tags do not matter
    ("<think> it is \\boxed{4} </think> I am not sure.", "4"),                # the whole completion
])
def test_boxed_answer_hand_cases(completion, expected):
    assert boxed_answer(completion) == expected
    assert extract_answer(completion, "boxed", "auto") == expected


def test_r1_format_is_unchanged():
    assert extract_answer("<think> 2 + 2 = 5 </think> so \\boxed{4}") == "4"
    assert extract_answer("<think> it is \\boxed{4} </think> I am not sure.") is None  # no number after
    assert extract_answer("The answer is \\boxed{5}.") is None  # no </think>
    assert accuracy("The answer is \\boxed{5}.", "5") == 0.0
    assert accuracy("The answer is \\boxed{5}.", "5", "boxed") == 1.0


# --- real MATH-500 ---------------------------------------------------------------------------------

@needs_data
def test_math500_boxed_gold_scores_one_under_boxed_and_zero_under_r1():
    rows = _rows(MATH500)[:50]
    assert len(rows) == 50
    for row in rows:
        completion = _plain_cot(row["answer"])
        assert boxed_answer(completion) == row["answer"], row["unique_id"]  # these 50 are clean
        assert accuracy(completion, row["answer"], "boxed") == 1.0, row["unique_id"]
        assert accuracy(completion, row["solution"], "boxed") == 1.0, row["unique_id"]  # a solution gold
        assert accuracy(completion, row["answer"], "r1") == 0.0, row["unique_id"]  # no </think>
        assert accuracy(completion, row["answer"]) == 0.0  # the default stays "r1"


@needs_data
def test_math500_only_the_last_box_counts():
    for row in _rows(MATH500)[:50]:
        right_then_wrong = f"First I get \\boxed{{{row['answer']}}}. On checking it is \\boxed{{{WRONG}}}."
        wrong_then_right = f"First I get \\boxed{{{WRONG}}}. On checking it is \\boxed{{{row['answer']}}}."
        assert accuracy(right_then_wrong, row["answer"], "boxed") == 0.0, row["unique_id"]
        assert accuracy(wrong_then_right, row["answer"], "boxed") == 1.0, row["unique_id"]


@needs_data
def test_math500_nested_brace_answers_extract_whole():
    rows = _rows(MATH500)
    nested = {i: rows[i]["answer"] for i in range(50) if "{" in rows[i]["answer"]}
    assert nested == {0: "\\left( 3, \\frac{\\pi}{2} \\right)", 2: "\\frac{14}{3}", 4: "\\text{Evelyn}",
                      8: "3\\sqrt{13}", 11: "\\frac{3}{56}", 14: "\\sqrt{51}", 33: "\\frac{243}{625}",
                      43: "70 \\sqrt{2}", 48: "\\frac{3}{2}"}
    for answer in nested.values():
        assert boxed_answer(f"Thus $x = \\boxed{{{answer}}}$ and we are done.") == answer


@needs_data
def test_math500_reference_solutions_read_as_plain_cot_completions():
    """A reference solution is itself a plain chain of thought ending in \\boxed{}: its last box is
    the answer field; row 343 writes it ``58,500``, cleaned to ``58500``; row 45 boxes ``2`` twice."""
    rows = _rows(MATH500)
    assert rows[343]["answer"] == "58,500" and boxed_answer(rows[343]["solution"]) == "58500"
    assert rows[45]["solution"].count("\\boxed{2}") == 2 and boxed_answer(rows[45]["solution"]) == "2"
    for row in rows[:50]:
        assert boxed_answer(row["solution"]) == row["answer"], row["unique_id"]
        assert extract_answer(row["solution"]) is None  # no </think>: nothing under "r1"


# --- real GSM8K --------------------------------------------------------------------------------

@needs_data
def test_gsm8k_thousands_separators_and_negatives_through_the_loader():
    raw, loaded = _rows(GSM8K), load_benchmark(GSM8K)
    # README: 14 test rows with separators; row 146 is "#### 2,125", rows 489 and 1113 are negative.
    assert raw[146]["answer"].endswith("#### 2,125") and loaded[146]["answer"] == "2125"
    assert raw[489]["answer"].endswith("#### -10") and loaded[489]["answer"] == "-10"
    assert raw[1113]["answer"].endswith("#### -3") and loaded[1113]["answer"] == "-3"
    with_commas = [i for i, r in enumerate(raw) if "," in r["answer"].rsplit("####", 1)[1]]
    assert len(with_commas) == 14
    for i in with_commas + [489, 1113]:
        written = raw[i]["answer"].rsplit("####", 1)[1].strip()  # e.g. "2,125" or "-10"
        for gold in (raw[i]["answer"], loaded[i]["answer"]):
            for completion in (_plain_cot(written), _plain_cot(loaded[i]["answer"])):
                assert accuracy(completion, gold, "boxed") == 1.0, (i, completion, gold)
                assert quick_accuracy(completion, gold, "boxed") == 1.0  # integers: no math-verify
                assert accuracy(completion, gold, "r1") == 0.0


@needs_data
def test_gsm8k_no_box_falls_back_to_the_last_number():
    gold = load_benchmark(GSM8K)[0]["answer"]  # Janet's ducks: 18
    assert gold == "18"
    assert accuracy("16 - 3 - 4 = 9 eggs, 9 * 2 = 18. She makes $18 every day.", gold, "boxed") == 1.0
    assert accuracy("She makes $18 every day, 7 days a week.", gold, "boxed") == 0.0  # last number: 7
    assert accuracy("She makes \\boxed{18} every day, 7 days a week.", gold, "boxed") == 1.0  # box first


@needs_data
def test_r1_format_completions_still_score_one_under_r1():
    rows = load_benchmark(MATH500)[:10] + load_benchmark(GSM8K)[:10]
    for row in rows:
        zero = r1_zero_completion("I work it out.", row["answer"])  # <answer> gold </answer>
        readable = r1_completion("I work it out.", row["answer"])  # … </think> The answer is \boxed{gold}.
        assert accuracy(zero, row["answer"], "r1") == 1.0 and accuracy(readable, row["answer"], "r1") == 1.0
        assert accuracy(readable, row["answer"], "boxed") == 1.0  # its last box is the gold too


# --- the batch reward through a real grading pool ------------------------------------------------

@needs_data
def test_accuracy_reward_grades_boxed_in_the_pool():
    rows = _rows(MATH500)[:6]  # golds: (3, pi/2), p - q, 14/3, 9, Evelyn, 42
    completions = [_plain_cot(r["answer"]) for r in rows[:3]] + [_plain_cot(WRONG)] * 3
    golds = [r["answer"] for r in rows]
    with GradingPool(workers=1) as pool:
        boxed = AccuracyReward(timeout_s=30.0, pool=pool, answer_format="boxed")(completions, golds)
        r1 = AccuracyReward(timeout_s=30.0, pool=pool)(completions, golds)
    assert list(boxed) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0] and boxed.n_timeouts == 0
    assert list(r1) == [0.0] * 6


# --- evaluate_model on a boxed-answering engine ------------------------------------------------

LENGTH = 7  # completion tokens of every fake sample


class BoxedGoldEngine:
    """A GenerationEngine that answers each prompt rendered with the "boxed" template by a plain
    chain of thought ending in the gold's \\boxed{}; any other prompt is a KeyError."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        self.completions = {render_prompt(p["question"], "boxed"): _plain_cot(p["answer"]) for p in problems}
        self.calls = 0

    def generate(self, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, seed: int | None = None, suppress_eos: bool = False,
                 stop: tuple[str, ...] = ()) -> Rollouts:
        self.calls += 1
        texts = [self.completions[p] for p in prompts for _ in range(n)]
        ones = torch.ones(len(texts), LENGTH, dtype=torch.long)
        return Rollouts(prompt_ids=ones[:, :1], prompt_mask=ones[:, :1], completion_ids=ones,
                        completion_mask=ones, texts=texts, finish_reasons=["stop"] * len(texts),
                        prompt_index=[i for i in range(len(prompts)) for _ in range(n)])

    def sync_weights(self, model) -> None:
        pass


@needs_data
def test_evaluate_model_boxed_format_scores_a_boxed_gold_engine():
    problems = load_benchmark(MATH500)[:4] + load_benchmark(GSM8K)[145:148]  # 2,125 among them
    engine = BoxedGoldEngine(problems)
    kw = {"template": "boxed", "k": 3, "batch_size": 3, "max_new_tokens": LENGTH}
    result = evaluate_model(engine, problems, answer_format="boxed", **kw)
    m = result.metrics
    assert engine.calls == 3  # 7 problems, 3 per call
    assert m["pass_at_1"] == 1.0 and m["cons_at_3"] == 1.0 and m["pass_at_2"] == 1.0 and m["pass_at_3"] == 1.0
    assert m["pass_at_1_stderr"] == 0.0 and m["lenient_pass_at_1"] == 1.0 and m["num_problems"] == 7.0
    assert m["mean_length"] == LENGTH and m["truncated_rate"] == 0.0 and m["grading_timeouts"] == 0.0
    assert [s["extracted"] for s in result.samples[::3]] == [p["answer"] for p in problems]
    assert result.samples[0]["extracted"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert evaluate_model(engine, problems, **kw).metrics == m  # "auto": the boxed template's default

    r1 = evaluate_model(engine, problems, answer_format="r1", **kw)  # the same samples, graded after </think>
    assert r1.metrics["pass_at_1"] == 0.0 and r1.metrics["cons_at_3"] == 0.0
    assert {s["extracted"] for s in r1.samples} == {None}
    with pytest.raises(KeyError):  # the r1 template renders other prompts: the engine knows none
        evaluate_model(engine, problems, template="r1", k=1)
