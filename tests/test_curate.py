"""Cold-start curation and rejection-sampling filters on handwritten completions.

Every expected kept set and count below is derived by hand from the rules in
``r1flow.data.filters`` / ``r1flow.data.curate`` (noted per row).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from r1flow.data.curate import (
    SFT_FIELDS,
    SOURCE_FIELDS,
    CurationParams,
    RejectionParams,
    curate,
    mix_non_reasoning,
    ngram_index,
    ngram_overlap,
    normalize,
    rejection_filter,
    spread_limit,
    words,
)
from r1flow.data.filters import (
    apply_filters,
    is_correct,
    is_single_language,
    is_well_formed,
    no_code_blocks,
    no_long_paragraphs,
    not_truncated,
    within_length,
)
from r1flow.data.io import read_jsonl, write_jsonl
from r1flow.rewards import accuracy, format_reward
from r1flow.templates import r1_completion, render_prompt

SHARED = Path("/work/shared/data")
# Real Chinese text: CMATH test row 0 ("芳芳买了一本书有99页，看了90页，她还剩多少页没有看？").
ZH_QUESTION = json.loads((SHARED / "cmath/test.jsonl").read_text(encoding="utf-8").splitlines()[0])["question"]
# Real eval question: GSM8K test row 0 ("Janet’s ducks lay 16 eggs per day. She eats three ...").
GSM8K_Q0 = json.loads((SHARED / "gsm8k/test.jsonl").read_text(encoding="utf-8").splitlines()[0])["question"]


def zero(reasoning: str, answer: str) -> str:
    return f" <think> {reasoning} </think> <answer> {answer} </answer>"


def ex(completion: str, answer: str = "19", template: str = "r1_zero", **extra: str) -> dict[str, str]:
    return {"question": "Compute 12 + 7", "answer": answer, "completion": completion, "template": template, **extra}


# ---- filters on literal strings ---------------------------------------------------------------


def test_is_correct_and_is_well_formed():
    good = ex(" <think> 12 plus 7 is 19. </think> <answer> 19 </answer>")
    assert is_correct(good) and is_well_formed(good)
    assert not is_correct(ex(" <think> 12 plus 7 is 18. </think> <answer> 18 </answer>"))
    assert is_correct(ex(" <think> 12 plus 7 is 19. </think> <answer> 19 </answer>", answer="12 + 7 = 19\n#### 19"))
    assert not is_well_formed(ex(" 12 plus 7 is 19. <answer> 19 </answer>"))  # no <think>
    assert not is_well_formed(ex(" <think> 12 plus 7 is 19. </think> 19"))  # R1-Zero needs <answer>
    r1 = ex(" 12 plus 7 is 19. </think> The answer is \\boxed{19}.", template="r1")  # <think> pre-filled
    assert is_correct(r1) and is_well_formed(r1)
    assert not is_well_formed(ex(" <think> 12 plus 7 is 19. </think> The answer is 19.", template="r1"))


def test_is_single_language_scores_the_reasoning_only():
    keep = is_single_language("en", threshold=0.95)
    assert keep(ex(zero("12 plus 7 is 19.", "19")))
    # 22 Han characters + 4 English words: consistency 4/26 ≈ 0.15.
    assert not keep(ex(zero(f"{ZH_QUESTION} 12 plus 7 is 19.", "19")))
    # A Chinese question with an English chain of thought is single-language.
    assert keep({**ex(zero("99 minus 90 is 9.", "9")), "question": ZH_QUESTION})
    # 9 English words, 1 Han character: 0.9 passes a 0.9 threshold, not a 0.95 one.
    mixed = ex(zero("first add twelve and seven then the sum is 好", "19"))
    assert is_single_language("en", 0.9)(mixed) and not keep(mixed)
    assert is_single_language("zh", 0.95)(ex(zero(ZH_QUESTION, "9")))


def test_within_length_in_chars_or_tokens():
    example = ex(zero("12 plus 7 is 19.", "19"))  # reasoning "12 plus 7 is 19." = 16 chars, 5 words
    assert within_length(16, 16)(example)
    assert not within_length(17)(example) and not within_length(0, 15)(example)
    count_words = lambda text: len(text.split())  # noqa: E731 - a stand-in tokenizer
    assert within_length(5, 5, count=count_words)(example)
    assert not within_length(6, count=count_words)(example)


def test_no_code_blocks_no_long_paragraphs_not_truncated():
    assert no_code_blocks(ex(zero("12 plus 7 is 19.", "19")))
    assert not no_code_blocks(ex(zero("```python\nprint(12 + 7)\n```", "19")))
    assert not no_code_blocks(ex(zero("\n~~~\n12 + 7\n~~~\n", "19")))
    paragraphs = ex(" <think> 12 plus 7 is 19.\n\nCheck: 19 minus 7 is 12. </think> <answer> 19 </answer>")
    # Paragraphs, stripped: "<think> 12 plus 7 is 19." (24 chars) and "Check: … </answer>" (55).
    assert no_long_paragraphs(55)(paragraphs) and not no_long_paragraphs(54)(paragraphs)
    assert not_truncated(ex("", finish_reason="stop"))
    assert not not_truncated(ex(" <think> 12 plus", finish_reason="length"))


def test_apply_filters_counts_each_removal_once_in_order():
    examples = [
        ex(zero("12 plus 7 is 19.", "19")),  # kept
        ex(zero("12 plus 7 is 18.", "18")),  # incorrect
        ex(" 12 plus 7 is 18. <answer> 18 </answer>"),  # malformed first, so not counted as incorrect
    ]
    kept, counts = apply_filters(examples, [("malformed", is_well_formed), ("incorrect", is_correct)])
    assert kept == examples[:1]
    assert counts == {"malformed": 1, "incorrect": 1}
    with pytest.raises(ValueError, match="unique"):
        apply_filters(examples, [("a", is_correct), ("a", is_well_formed)])


# ---- decontamination helpers ------------------------------------------------------------------


def test_words_and_ngram_overlap():
    assert words("Janet’s ducks, 12+7!") == ["janet", "s", "ducks", "12", "+", "7"]
    assert words("看了90页") == ["看", "了", "90", "页"]
    assert normalize("compute 12+7.") == normalize("Compute 12 + 7") != normalize("Compute 12 - 7")
    index = ngram_index(["a b c d", "x y"], n=3)
    assert index == {("a", "b", "c"), ("b", "c", "d")}
    assert ngram_overlap("A b C d e", index, 3) == 2 and ngram_overlap("b c e", index, 3) == 0


# ---- curation ---------------------------------------------------------------------------------

EVAL_QUESTIONS = ["Compute 12 + 7", GSM8K_Q0]
NEAR_MISS = "Her ducks lay 16 eggs per day. How many eggs in 2 days?"
LONG_REASONING = "9 plus 9 is 18. 18 plus 9 is 27. Let me check that again: 9 plus 9 is 18 and 18 plus 9 is 27."


def _rows() -> list[dict[str, str]]:
    def row(question: str, answer: str, completion: str) -> dict[str, str]:
        return {"question": question, "answer": answer, "completion": completion}

    return [
        row("Compute 3 + 4", "7", zero("3 plus 4 is 7.", "7")),  # kept
        row("compute 3+4", "7", " <think>3 plus 4 is 7 </think> <answer>7</answer>"),  # duplicate of the first
        row("Compute 3 + 4", "7", zero("4 plus 3 is 7.", "7")),  # kept: 2nd of this question
        row("Compute 3 + 4", "7", zero("3 plus 4 makes 7.", "7")),  # max_per_question (2)
        row("Compute 5 + 6", "11", zero("5 plus 6 is 12.", "12")),  # incorrect
        row("Compute 2 + 2", "4", " 2 plus 2 is 4. <answer> 4 </answer>"),  # malformed: no <think>
        row("Compute 8 + 1", "9", zero(f"{ZH_QUESTION} 8 plus 1 is 9.", "9")),  # mixed_language
        row("compute 12+7.", "19", zero("12 plus 7 is 19.", "19")),  # contaminated: equals an eval question
        # contaminated: shares the 8-gram "s ducks lay 16 eggs per day she" with GSM8K test row 0.
        row("Tom's ducks lay 16 eggs per day. She eats three. How many are left?", "13",
            zero("16 minus 3 is 13.", "13")),
        # kept: shares only 6 words ("ducks lay 16 eggs per day") with GSM8K row 0.
        row(NEAR_MISS, "32", zero("16 plus 16 is 32.", "32")),
        # length: this reasoning is 93 characters, over the 80 allowed.
        row("Compute 9 + 9 + 9", "27", zero(LONG_REASONING, "27")),
        row(ZH_QUESTION, "9", zero("99 minus 90 is 9.", "9")),  # kept: Chinese question, English CoT
        row("Compute 10 + 3", "10 + 3 = 13\n#### 13", zero("10 plus 3 is 13.", "13")),  # kept, GSM8K-style gold
    ]


PARAMS = CurationParams(max_per_question=2, max_reasoning_chars=80)


def _sft(question: str, reasoning: str, answer: str) -> dict[str, str]:
    return {"prompt": render_prompt(question, "r1"), "completion": r1_completion(reasoning, answer)}


def test_curate_keeps_exactly_the_clean_examples_in_readable_format():
    assert len(LONG_REASONING) == 93
    examples, counts = curate(_rows(), EVAL_QUESTIONS, PARAMS)
    assert examples == [
        _sft("Compute 3 + 4", "3 plus 4 is 7.", "7"),
        _sft("Compute 3 + 4", "4 plus 3 is 7.", "7"),
        _sft(NEAR_MISS, "16 plus 16 is 32.", "32"),
        _sft(ZH_QUESTION, "99 minus 90 is 9.", "9"),
        _sft("Compute 10 + 3", "10 plus 3 is 13.", "13"),
    ]
    assert counts == {
        "contaminated": 2, "malformed": 1, "incorrect": 1, "mixed_language": 1, "length": 1,
        "duplicate": 1, "max_per_question": 1, "max_examples": 0,
    }
    assert len(_rows()) == len(examples) + sum(counts.values())
    first = examples[0]
    assert first["prompt"] == "User: Compute 3 + 4\nAssistant: <think>"
    assert first["completion"] == " 3 plus 4 is 7. </think> The answer is \\boxed{7}."
    # Every output is what the R1 rewards call well-formed and correct.
    golds = ["7", "7", "32", "9", "13"]
    assert format_reward([e["completion"] for e in examples], template="r1") == [1.0] * 5
    assert [accuracy(e["completion"], g) for e, g in zip(examples, golds)] == [1.0] * 5


def test_curate_decontamination_n_and_example_limit_are_configurable():
    # With n=6 the near-miss row shares "ducks lay 16 eggs per day" with GSM8K row 0 and goes too.
    examples, counts = curate(_rows(), EVAL_QUESTIONS, PARAMS.model_copy(update={"ngram_n": 6}))
    assert counts["contaminated"] == 3 and len(examples) == 4
    # max_examples=3 takes one example per question before a second one: the 2nd "3 + 4" goes.
    examples, counts = curate(_rows(), EVAL_QUESTIONS, PARAMS.model_copy(update={"max_examples": 3}))
    assert [e["prompt"] for e in examples] == [
        render_prompt(q, "r1") for q in ["Compute 3 + 4", NEAR_MISS, ZH_QUESTION]
    ]
    assert counts["max_examples"] == 2


def test_curate_from_a_jsonl_source(tmp_path):
    path = write_jsonl(tmp_path / "r1_zero_samples.jsonl", _rows())
    examples, _ = curate(read_jsonl(path, SOURCE_FIELDS), EVAL_QUESTIONS, PARAMS)
    out = write_jsonl(tmp_path / "cold_start.jsonl", examples)
    assert read_jsonl(out, SFT_FIELDS) == examples and len(examples) == 5


def test_spread_limit_covers_questions_first_and_keeps_order():
    rows = [{"question": q, "i": i} for i, q in enumerate(["a", "a", "b", "b", "c"])]
    kept, counts = spread_limit(rows, 4)
    assert [r["i"] for r in kept] == [0, 1, 2, 4] and counts == {"max_examples": 1}
    assert spread_limit(rows, None) == (rows, {"max_examples": 0})


def test_params_fail_naming_the_field():
    for bad, field in [({"ngram_n": 0}, "ngram_n"), ({"language_threshold": 1.5}, "language_threshold"),
                       ({"source_template": "chatml"}, "source_template"), ({"max_per_qestion": 2}, "max_per_qestion")]:
        with pytest.raises(ValidationError, match=field):
            CurationParams(**bad)
    with pytest.raises(ValidationError, match="min_reasoning_chars"):
        RejectionParams(min_reasoning_chars=10, max_reasoning_chars=5)


# ---- rejection sampling -----------------------------------------------------------------------


def test_rejection_filter_keeps_correct_clean_samples_verbatim():
    def sample(completion: str, finish: str = "stop", template: str = "r1", q: str = "Compute 3 + 4", a: str = "7"):
        return {"question": q, "answer": a, "completion": completion, "finish_reason": finish, "template": template}

    good = sample(" 3 plus 4 is 7. </think> The answer is \\boxed{7}.")
    two_paragraphs = sample(" 3 plus 4 is 7.\n\nCheck: 7 minus 4 is 3. </think> The answer is \\boxed{7}.")
    zero_template = sample(zero("5 plus 5 is 10.", "10"), template="r1_zero", q="Compute 5 + 5", a="10")
    samples = [
        good,
        sample(" 3 plus 4 is", finish="length"),  # truncated
        sample(" <think> 3 plus 4 is 7. </think> The answer is \\boxed{7}."),  # malformed: <think> twice
        sample(" 3 plus 4 is 8. </think> The answer is \\boxed{8}."),  # incorrect
        sample(f" {ZH_QUESTION} 3 plus 4 is 7. </think> The answer is \\boxed{{7}}."),  # mixed_language
        sample(" ```python\nprint(3 + 4)\n``` </think> The answer is \\boxed{7}."),  # code_block
        # long_paragraph: paragraphs of 14 and 100 characters, over 60.
        sample(" 3 plus 4 is 7.\n\nI will now check this sum very carefully once more: 3 plus 4 is 7."
               " </think> The answer is \\boxed{7}."),
        two_paragraphs,  # kept: paragraphs of 14 and 56 characters
        dict(good),  # duplicate
        zero_template,  # kept, under its own template
    ]
    examples, counts = rejection_filter(samples, RejectionParams(max_paragraph_chars=60))
    assert examples == [
        {"prompt": "User: Compute 3 + 4\nAssistant: <think>", "completion": good["completion"]},
        {"prompt": "User: Compute 3 + 4\nAssistant: <think>", "completion": two_paragraphs["completion"]},
        {"prompt": render_prompt("Compute 5 + 5", "r1_zero"), "completion": zero_template["completion"]},
    ]
    assert counts == {
        "truncated": 1, "malformed": 1, "incorrect": 1, "mixed_language": 1, "code_block": 1,
        "long_paragraph": 1, "length": 0, "duplicate": 1, "max_per_question": 0, "max_examples": 0,
    }


# ---- mixing non-reasoning data ----------------------------------------------------------------


def test_mix_non_reasoning_share_and_determinism():
    reasoning = [{"prompt": f"r{i}", "completion": "c"} for i in range(6)]
    other = [{"prompt": f"n{i}", "completion": "c"} for i in range(10)]
    mixed = mix_non_reasoning(reasoning, other, fraction=0.25, seed=0)
    # 6 * 0.25 / 0.75 = 2 non-reasoning rows: 2 of 8 = 0.25.
    assert len(mixed) == 8 and sum(m["prompt"].startswith("n") for m in mixed) == 2
    assert all(r in mixed for r in reasoning)
    assert mixed == mix_non_reasoning(reasoning, other, fraction=0.25, seed=0)
    assert mixed != mix_non_reasoning(reasoning, other, fraction=0.25, seed=1)
    unmixed = mix_non_reasoning(reasoning, other, 0.0, seed=0)
    assert sorted(m["prompt"] for m in unmixed) == sorted(f"r{i}" for i in range(6))
    assert len(mix_non_reasoning(reasoning, other[:1], 0.5, seed=0)) == 7  # wants 6, only 1 exists
    with pytest.raises(ValueError, match="fraction"):
        mix_non_reasoning(reasoning, other, 1.0, seed=0)
