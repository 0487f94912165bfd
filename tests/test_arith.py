"""The synthetic task: deterministic draws, right worked steps, a pinned held-out set kept out of training."""

from __future__ import annotations

import hashlib
import re

import pytest
from pydantic import ValidationError

from r1flow.data import arith
from r1flow.data.arith import (
    HELDOUT_PATH,
    HELDOUT_SHA256,
    HELDOUT_SIZE,
    CorpusMix,
    TaskParams,
    canonical_key,
    generate_problems,
    heldout_keys,
    load_heldout,
    pretraining_corpus,
    rl_prompts,
)

STEP = re.compile(r"(\d+) (plus|minus) (\d+) is (\d+)\.")
QUESTION = re.compile(r"User: (Compute [0-9+\- ]+?)(?:\. Assistant:|\nAssistant:)")


def check_steps(question: str, steps: str) -> list[bool]:
    """Per step, whether it is right; also asserts the steps follow the question's chain."""
    tokens = question.removeprefix("Compute ").split()
    operands, ops = [int(t) for t in tokens[::2]], tokens[1::2]
    found = STEP.findall(steps)
    assert len(found) == len(ops), (question, steps)
    left, ok = operands[0], []
    for (a, word, b, result), op, operand in zip(found, ops, operands[1:]):
        assert int(a) == left and int(b) == operand and word == arith.OP_WORDS[op]
        ok.append(int(result) == (left + operand if op == "+" else left - operand))
        left = int(result)
    return ok


def test_generator_is_deterministic_by_seed():
    first, again, other = generate_problems(50, 3), generate_problems(50, 3), generate_problems(50, 4)
    assert first == again
    assert first != other
    mix = CorpusMix()
    assert pretraining_corpus(200, 1, mix) == pretraining_corpus(200, 1, mix)
    assert pretraining_corpus(200, 1, mix) != pretraining_corpus(200, 2, mix)


def test_clean_worked_steps_are_right_and_end_at_the_answer():
    task = TaskParams(max_operand=30, min_terms=2, max_terms=5)
    for p in generate_problems(500, 0, task) + generate_problems(200, 1):
        assert all(check_steps(p.question, p.solution_steps))
        assert p.solution_steps.endswith(f"is {p.answer}.")
        assert int(p.answer) >= 0 and p.answer == str(eval(canonical_key(p.question)))
    # hand-checked example: "12 plus 7 is 19. 19 minus 3 is 16."
    p = arith.make_problem(((12, 7, 3), ("+", "-")), "x")
    assert (p.question, p.answer, p.solution_steps) == ("Compute 12 + 7 - 3", "16", "12 plus 7 is 19. 19 minus 3 is 16.")


def chain(text: str) -> list[tuple[int, str, int, int]]:
    """The worked steps in ``text`` as (left, op, operand, result); each must be true arithmetic."""
    steps = [(int(a), "+" if w == "plus" else "-", int(b), int(r)) for a, w, b, r in STEP.findall(text)]
    assert all(r == (a + b if op == "+" else a - b) for a, op, b, r in steps), text  # never a false fact
    return steps


def follows(question: str, steps: list[tuple[int, str, int, int]]) -> bool:
    """Whether the steps read the question right (same operands and operators, in order)."""
    tokens = question.removeprefix("Compute ").split()
    operands, ops = [int(t) for t in tokens[::2]], tokens[1::2]
    return [(op, b) for _, op, b, _ in steps] == list(zip(ops, operands[1:])) and steps[0][0] == operands[0]


def test_corpus_forms_have_the_intended_errors_and_tags():
    mix = CorpusMix(clean=0.2, slip=0.2, guess=0.2, untagged=0.2, bare=0.2, r1_fraction=0.2)
    docs = pretraining_corpus(1000, 5, mix)
    counts = dict.fromkeys(("clean", "slip", "guess", "untagged", "bare", "r1"), 0)
    for doc in docs:
        question = QUESTION.search(doc).group(1)
        truth = eval(canonical_key(question))
        completion = doc.split("Assistant:", 1)[1]
        if "<answer>" in completion:
            answer = int(re.search(r"<answer> (\d+) </answer>$", completion).group(1))
            if arith.GUESS_REASONING in completion:  # a guess: no working, an answer near the truth
                counts["guess"] += 1
                assert abs(answer - truth) <= arith.GUESS_SPREAD
                continue
            steps = chain(completion)
            assert steps[-1][3] == answer
            if follows(question, steps):
                counts["clean"] += 1
                assert answer == truth
            else:  # a slip: one misread step, carried to a wrong answer
                counts["slip"] += 1
                assert answer != truth
        elif "\\boxed{" in completion:
            counts["r1"] += 1
            assert doc.startswith("User: ") and follows(question, chain(completion))
            assert completion.rstrip().endswith(f"\\boxed{{{truth}}}.")
        else:  # no tags: worked steps then the answer, or a bare near-miss answer
            assert "<think>" not in completion
            steps = chain(completion)
            if steps:
                counts["untagged"] += 1
                assert follows(question, steps) and steps[-1][3] == truth
            else:
                counts["bare"] += 1
                guessed = int(re.search(r"The answer is (\d+)\.$", completion).group(1))
                assert abs(guessed - truth) <= arith.GUESS_SPREAD
    # 1000 docs: about 200 r1 and 160 of each other form; every form is present in quantity
    assert all(80 < n < 300 for n in counts.values()), counts


def test_heldout_file_matches_its_pinned_digest_and_regenerates_exactly():
    data = HELDOUT_PATH.read_bytes()
    assert hashlib.sha256(data).hexdigest() == HELDOUT_SHA256
    assert arith.heldout_jsonl().encode() == data
    rows = load_heldout()
    assert len(rows) == HELDOUT_SIZE >= 500
    assert all(set(r) == {"id", "question", "answer"} for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({canonical_key(r["question"]) for r in rows}) == len(rows)
    assert all(r["answer"] == str(eval(canonical_key(r["question"]))) for r in rows)


def test_load_heldout_rejects_a_changed_file(tmp_path, monkeypatch):
    changed = tmp_path / "heldout.jsonl"
    changed.write_bytes(HELDOUT_PATH.read_bytes().replace(b'"answer": "1', b'"answer": "2', 1))
    monkeypatch.setattr(arith, "HELDOUT_PATH", changed)
    with pytest.raises(ValueError, match="sha256"):
        load_heldout()


def test_no_heldout_problem_in_any_training_text():
    held = heldout_keys()
    docs = pretraining_corpus(20000, 0, CorpusMix())
    corpus_keys = {canonical_key(QUESTION.search(d).group(1)) for d in docs}
    prompts = rl_prompts(4000, 0) + generate_problems(4000, 7)
    assert len(corpus_keys) > 3000
    assert not corpus_keys & held
    assert not {canonical_key(p.question) for p in prompts} & held
    assert not any(p.question in {r["question"] for r in load_heldout()} for p in prompts)
    # the exclusion is doing work: the same draws without it hit held-out problems
    raw = arith._exprs(20000, 0, arith.TaskParams(), frozenset(), unique=False)
    assert {canonical_key(arith.question_text(e)) for e in raw} & held


def test_rl_prompts_are_distinct():
    prompts = rl_prompts(1000, 2)
    assert len({p.question for p in prompts}) == 1000
    assert rl_prompts(1000, 2) == prompts


def test_invalid_params_name_the_field():
    with pytest.raises(ValidationError, match="max_operand"):
        TaskParams(max_operand=0)
    with pytest.raises(ValidationError, match="min_terms"):
        TaskParams(min_terms=4, max_terms=3)
    with pytest.raises(ValidationError, match="must be 1"):
        CorpusMix(clean=0.9)
    with pytest.raises(ValidationError, match="slip"):
        CorpusMix(slip=-0.1)
