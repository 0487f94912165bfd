"""Rule rewards (paper §2.2.2, §2.3.2) against literal strings and real benchmark rows."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from math_verify import parse, verify

from r1flow import rewards
from r1flow.rewards import (
    AccuracyReward,
    accuracy,
    extract_answer,
    format_reward,
    get_reward,
    gold_answer,
    language_consistency,
    quick_accuracy,
    split_completion,
)
from r1flow.templates import r1_completion, r1_zero_completion

DATA = Path(os.environ.get("R1FLOW_DATA", "/work/shared/data"))


def rows(name: str, n: int | None = None) -> list[dict]:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"benchmark data not found at {path}")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f][:n]


# --- splitting and extraction ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "template", "expected"),
    [
        (" <think> a </think> <answer> 5 </answer>", "r1_zero", ("a", "<answer> 5 </answer>")),
        (" a </think> The answer is 5.", "r1", ("a", "The answer is 5.")),
        (" <think> a </think> b", "r1", ("a", "b")),  # a repeated pre-fill is dropped
        (" <think> a still thinking", "r1_zero", ("a still thinking", None)),
        ("no tags at all", "r1_zero", (None, None)),
        ("no tags at all", "r1", ("no tags at all", None)),
        (" <think> a </think> b </think> c", "r1_zero", ("a", "b </think> c")),  # first close
    ],
)
def test_split_completion(completion, template, expected):
    assert split_completion(completion, template) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (" <think> 7 </think> <answer> 5 </answer>", "5"),
        (" <think> 7 </think> <answer> $\\frac{1}{2}$. </answer>", "\\frac{1}{2}"),
        (" <think> 7 </think> <answer> so \\boxed{3} </answer> 4", "3"),  # box inside the block
        (" <think> 7 </think> <answer> 12", "12"),  # unclosed block runs to the end
        (" <think> 7 </think> <answer>1</answer> <answer>2</answer>", "2"),
        (" 7 </think> \\boxed{\\frac{a}{b}} then \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}",
         "\\left( 3, \\frac{\\pi}{2} \\right)"),
        (" 7 </think> \\boxed{4} and an unclosed \\boxed{5", "4"),
        (" 7 </think> She makes $2,125 in total.", "2125"),  # thousands separator dropped
        (" 7 </think> the difference 8-3 is -5 or 5.5", "5.5"),
        (" the answer is 7 </think> I am not sure.", None),  # only the final part counts
        (" <think> the answer is 7 and \\boxed{7}", None),  # thinking never closed
        (" 7 </think> <answer>  </answer>", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion, "r1") == expected


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        ("She earns 2,000 + 125 = <<2000+125=2125>>2125\n#### 2,125", "2125"),
        ("#### -3", "-3"),
        ("So the answer is $\\boxed{\\frac{14}{3}}$.", "\\frac{14}{3}"),
        ("025", "025"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ],
)
def test_gold_answer(gold, expected):
    assert gold_answer(gold) == expected


# --- accuracy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        (" <think> 3 </think> <answer> 25 </answer>", "025", 1.0),  # zero-padded AIME gold
        (" <think> 3 </think> <answer> 26 </answer>", "025", 0.0),
        (" 3 </think> so \\boxed{2125}", "#### 2,125", 1.0),
        (" 3 </think> so \\boxed{2,125}", "#### 2,125", 1.0),
        (" 3 </think> so \\boxed{2,126}", "#### 2,125", 0.0),
        (" 3 </think> She makes $18 every day.", "#### 18", 1.0),  # last number
        (" 3 </think> \\boxed{\\frac{28}{6}}", "\\frac{14}{3}", 1.0),
        (" 3 </think> \\boxed{4.6667}", "\\frac{14}{3}", 0.0),
        (" 3 </think> \\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
        (" 3 </think> \\boxed{(\\frac{\\pi}{2}, 3)}", "\\left( 3, \\frac{\\pi}{2} \\right)", 0.0),
        (" 3 </think> \\boxed{6-5i}", "6 - 5i", 1.0),
        (" 3 </think> \\boxed{6+5i}", "6 - 5i", 0.0),
        (" 3 </think> <answer> The answer is $\\pi$ </answer>", "\\pi", 1.0),
        (" the answer is \\boxed{18} </think> I give up.", "#### 18", 0.0),
        (" <think> \\boxed{18} <answer> 18 </answer>", "#### 18", 0.0),  # never closed
        (" 3 </think> \\boxed{\\text{Evelyn}}", "\\text{Evelyn}", 1.0),
    ],
)
def test_accuracy_literals(completion, gold, expected):
    assert accuracy(completion, gold) == expected


def _math_verify_integers(prediction: str, gold: str) -> float:
    """What math-verify itself says about two integers (the verdict quick_accuracy must match)."""
    boxed = lambda s: parse(f"\\boxed{{{s}}}", parsing_timeout=None)  # noqa: E731
    return float(verify(boxed(gold), boxed(prediction), timeout_seconds=None))


def test_quick_path_agrees_with_math_verify():
    golds = [gold_answer(r["answer"]) for r in rows("gsm8k/test.jsonl")]
    chosen = golds[:40] + [g for g in golds if len(g) >= 5 or g.startswith("-")]
    pairs = [(g, p) for g in chosen for p in (g, str(int(g) + 1), "0" + g.lstrip("-"))]
    pairs += [("025", "25"), ("5", "+5"), ("0", "-0"), ("123456789012345678", "123456789012345679")]
    for gold, prediction in pairs:
        quick = quick_accuracy(f" 1 </think> <answer> {prediction} </answer>", gold)
        assert quick is not None
        assert quick == _math_verify_integers(prediction, gold), (gold, prediction)


def gsm8k_cases() -> tuple[list[str], list[str], list[float]]:
    """Correct and wrong completions built from GSM8K test golds, thousands separators kept."""
    data = rows("gsm8k/test.jsonl")
    separated = [r for r in data if "," in r["answer"].rsplit("####", 1)[1]]
    assert len(separated) == 14  # the README's count
    completions, golds, expected = [], [], []
    for row in data[:30] + separated:
        work, final = row["answer"].rsplit("####", 1)
        final = final.strip()  # e.g. "2,125"
        wrong = str(int(final.replace(",", "")) + 1)
        completions += [r1_zero_completion(work, final), r1_completion(work, final),
                        r1_zero_completion(work, wrong)]
        golds += [row["answer"]] * 3
        expected += [1.0, 1.0, 0.0]
    return completions, golds, expected


def math500_cases() -> tuple[list[str], list[str], list[float]]:
    """The first 25 MATH-500 answers boxed after </think>, and perturbed (``+ 1``)."""
    completions, golds, expected = [], [], []
    for row in rows("math500/test.jsonl", 25):
        answer = row["answer"]
        completions += [r1_completion("Let me work.", answer),
                        r1_zero_completion("Let me work.", answer),
                        r1_completion("Let me work.", answer + " + 1")]
        golds += [answer, row["solution"], answer]  # a full solution works as a gold too
        expected += [1.0, 1.0, 0.0]
    return completions, golds, expected


def test_gsm8k_rows(pool):
    completions, golds, expected = gsm8k_cases()
    assert AccuracyReward(pool=pool)(completions, golds) == expected


def test_math500_rows(pool):
    completions, golds, expected = math500_cases()
    reward = AccuracyReward(pool=pool)
    scores = reward(completions, golds)
    assert scores == expected and scores.n_timeouts == reward.total_timeouts == 0


def test_cmath_rows(pool):
    data = rows("cmath/test.jsonl")
    answers = [r["answer"] for r in data]  # "9", "0.002", "1/21", "12%", ...
    completions = [r1_completion(r["question"], a) for r, a in zip(data, answers)]
    assert AccuracyReward(pool=pool)(completions, answers) == [1.0] * len(data)
    shifted = answers[1:] + answers[:1]
    wrong = [r1_completion("x", s) for s in shifted]
    expected = [float(gold_answer(s) == gold_answer(a)) for s, a in zip(shifted, answers)]
    scores = AccuracyReward(pool=pool)(wrong, answers)
    assert sum(scores) < 0.2 * len(data)
    assert all(s >= e for s, e in zip(scores, expected))  # identical strings always match


def test_same_results_off_the_main_thread(pool):
    g_completions, g_golds, g_expected = gsm8k_cases()
    m_completions, m_golds, m_expected = math500_cases()
    completions, golds = g_completions[:45] + m_completions, g_golds[:45] + m_golds
    assert len(completions) >= 50
    main = [accuracy(c, g) for c, g in zip(completions, golds)]
    assert main == g_expected[:45] + m_expected
    with ThreadPoolExecutor(max_workers=3) as executor:
        threaded = list(executor.map(accuracy, completions, golds))
        batched = executor.submit(AccuracyReward(pool=pool), completions, golds).result()
    assert threaded == main
    assert batched == main


# --- format --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "template", "expected"),
    [
        (r1_zero_completion("2 + 3 = 5", "5"), "r1_zero", 1.0),
        ("<think>\n2 + 3 = 5\n</think>\n<answer>\n5\n</answer>\n", "r1_zero", 1.0),
        ("<think> 2 + 3 = 5 </think> <answer> 5 </answer> extra", "r1_zero", 0.0),
        ("<think> 2 + 3 = 5 </think> <answer> </answer>", "r1_zero", 0.0),
        ("<think> </think> <answer> 5 </answer>", "r1_zero", 0.0),  # no reasoning
        ("2 + 3 = 5 </think> <answer> 5 </answer>", "r1_zero", 0.0),  # never opened
        ("<think> 2 + 3 = 5 <answer> 5 </answer>", "r1_zero", 0.0),  # never closed
        ("<think> <answer> 5 </answer> </think> <answer> 5 </answer>", "r1_zero", 0.0),
        # The R1 template pre-fills <think>: a completion starts inside the block.
        (r1_completion("2 + 3 = 5", "5"), "r1", 1.0),
        ("<think> 2 + 3 = 5 </think> The answer is 5.", "r1", 0.0),  # opened twice
        ("2 + 3 = 5 </think>   ", "r1", 0.0),  # no summary
        ("2 + 3 = 5 </think> 5 </think> 5", "r1", 0.0),  # closed twice
        (r1_completion("2 + 3 = 5", "5"), "r1_zero", 0.0),  # R1 output under R1-Zero's rules
    ],
)
def test_format_reward(completion, template, expected):
    assert format_reward([completion], template=template) == [expected]


# --- language consistency --------------------------------------------------------------------


def test_language_consistency_literals():
    # Words: First, add, and, multiply (en) + 然, 后 (zh) = 6 units.
    assert language_consistency("First add 2 and 3, 然后 multiply", "en") == 4 / 6
    assert language_consistency("First add 2 and 3, 然后 multiply", "zh") == 2 / 6
    # Ignored: $...$ math, \commands, `code`, fenced code, digits, Greek; left: So, is (2 en).
    text = "So $x^2 + \\alpha$ is \\frac{1}{2} `print(你好)` 3.14 π\n```\n注释 comment\n```"
    assert language_consistency(text, "en") == 1.0
    assert language_consistency(text, "zh") == 0.0
    # "$5 and $6" are dollars, not math: pays, and (en) + 花 (zh) -> 2/3 en.
    assert language_consistency("pays $5 and $6 花", "en") == 2 / 3
    assert language_consistency("Это 2 + 3 = 5, don't", "en") == 1 / 2  # Это, don't
    assert language_consistency("ひらがな中文", "zh") == 2 / 6  # kana count against zh
    assert language_consistency("2 + 3 = 5 $x$", "zh") == 1.0  # no units: nothing mixed
    with pytest.raises(ValueError, match="unknown language 'fr'"):
        language_consistency("bonjour", "fr")


def test_language_consistency_on_cmath_rows():
    data = rows("cmath/test.jsonl")
    zh = [language_consistency(r["question"], "zh") for r in data]
    en = [language_consistency(r["question"], "en") for r in data]
    assert sum(zh) / len(zh) > 0.98 and min(zh) > 0.8
    assert sum(en) / len(en) < 0.02
    # Row 0: 芳芳买了一本书有 8 + 页 1 + 看了 2 + 页 1 + 她还剩多少页没有看 9 = 21 Han characters.
    question = data[0]["question"]
    assert language_consistency(question, "zh") == 1.0
    mixed = question + " So we subtract 90 from 99: $99 - 90 = 9$."  # So, we, subtract, from
    assert language_consistency(mixed, "zh") == 21 / 25
    assert language_consistency(mixed, "en") == 4 / 25
    # 一个足球场长 6 + 宽 1 + 把它画在一张纸上 8 + 长画了 3 + 宽应该画多少厘米 8 = 26 Han; m, m, cm.
    field = next(r["question"] for r in data if r["question"].startswith("一个足球场长120m"))
    assert language_consistency(field, "zh") == 26 / 29


def test_language_reward_reads_only_the_reasoning():
    reward = get_reward("language", template="r1", lang="zh")
    completions = [" 先算 2 + 3 </think> The answer is 5.", " 先 add </think> 答案", "no think"]
    # 先, 算 -> 1.0; 先, add -> 1/2; unclosed R1 thinking is all reasoning: no, think -> 0.
    assert reward(completions, ["5", "5", "5"]) == [1.0, 0.5, 0.0]
    zero = get_reward("language", template="r1_zero", lang="en")
    assert zero(["The answer is 5", " <think> add </think> 加"], ["5", "5"]) == [0.0, 1.0]


# --- registry ------------------------------------------------------------------------------------


def test_registry_names_and_signature(pool):
    completion, gold = r1_zero_completion("two plus three", "5"), "#### 5"
    for name, params in [("accuracy", {"pool": pool}), ("format", {"template": "r1_zero"}),
                         ("language", {"template": "r1_zero", "lang": "en"})]:
        reward = get_reward(name, **params)
        assert reward.__name__ == name
        assert reward([completion], [gold]) == [1.0]
        assert reward([], []) == []
    assert set(rewards.REWARDS) == {"accuracy", "format", "language"}


def test_registry_errors():
    with pytest.raises(ValueError, match=r"unknown reward 'acuracy'; known: \['accuracy', "):
        get_reward("acuracy")
    with pytest.raises(ValueError, match="bad parameters for reward 'format'"):
        get_reward("format", lang="en")
    with pytest.raises(ValueError, match="unknown template 'chatml'"):
        get_reward("format", template="chatml")
    with pytest.raises(ValueError, match="unknown language 'de'"):
        get_reward("language", lang="de")
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        get_reward("accuracy", timeout_s=0)
