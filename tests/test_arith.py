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

QUESTION = re.compile(r"User: (Compute [0-9+\- ]+?)(?:\. Assistant:|\nAssistant:)")
CHAIN = re.compile(r"\d+(?: (?:plus|minus) \d+)*(?: is \d+(?: (?:plus|minus) \d+)*)+\.")
WORDS = {"plus": "+", "minus": "-"}


def parse(spoken: str) -> tuple[list[int], list[str]]:
    """``12 minus 3 plus 8`` -> ([12, 3, 8], ["-", "+"])."""
    tokens = spoken.split()
    return [int(t) for t in tokens[::2]], [WORDS[t] for t in tokens[1::2]]


def chain_is_right(chain: str) -> tuple[list[int], list[str]]:
    """Checks that each expression of ``a op b op c is ... is R.`` folds the previous one's first
    two numbers correctly; returns the expression the chain starts from."""
    parts = [parse(p) for p in chain.rstrip(".").split(" is ")]
    for (nums, ops), (nxt, nxt_ops) in zip(parts, parts[1:]):
        folded = nums[0] + nums[1] if ops[0] == "+" else nums[0] - nums[1]
        assert (nxt, nxt_ops) == ([folded] + nums[2:], ops[1:]), chain
    assert len(parts[-1][0]) == 1, chain
    return parts[0]


def value(question: str) -> int:
    return eval(canonical_key(question))


def test_generator_is_deterministic_by_seed():
    first, again, other = generate_problems(50, 3), generate_problems(50, 3), generate_problems(50, 4)
    assert first == again
    assert first != other
    mix = CorpusMix()
    assert pretraining_corpus(200, 1, mix) == pretraining_corpus(200, 1, mix)
    assert pretraining_corpus(200, 1, mix) != pretraining_corpus(200, 2, mix)


def test_clean_worked_steps_are_right_and_end_at_the_answer():
    wide = TaskParams(max_operand=30, min_terms=2, max_terms=5, max_total=0)
    for p in generate_problems(500, 0, wide) + generate_problems(500, 1):
        nums, ops = chain_is_right(p.solution_steps)
        assert "Compute " + " ".join([str(nums[0])] + [f"{o} {n}" for o, n in zip(ops, nums[1:])]) == p.question
        assert p.solution_steps.endswith(f" is {p.answer}.") and p.answer == str(value(p.question))
    for p in generate_problems(500, 2):  # the default task: operands 1-9, totals within 0..20
        totals = [int(x.split()[0]) for x in p.solution_steps.rstrip(".").split(" is ")]
        assert all(0 <= t <= 20 for t in totals) and 3 <= len(totals) <= 4
    # hand-checked: 12 + 7 = 19, 19 - 3 = 16
    p = arith.make_problem(((12, 7, 3), ("+", "-")), "x")
    assert (p.question, p.answer, p.solution_steps) == ("Compute 12 + 7 - 3", "16", "12 plus 7 minus 3 is 19 minus 3 is 16.")


def test_corpus_forms_have_the_intended_errors_and_tags():
    mix = CorpusMix(clean=0.2, slip=0.2, guess=0.2, untagged=0.2, bare=0.2, r1_fraction=0.15, drill_fraction=0.15)
    counts = dict.fromkeys(["clean", "slip", "guess", "untagged", "bare", "r1", "drill"], 0)
    for doc in pretraining_corpus(1000, 5, mix):
        found = QUESTION.search(doc)
        if found is None:  # a drill: questions, each with its worked chain
            counts["drill"] += 1
            chains = CHAIN.findall(doc)
            assert len(chains) == arith.DRILL_CHAINS
            questions = re.findall(r"Compute [0-9+\- ]+?(?=:)", doc)
            assert " ".join(f"{q}: {c}" for q, c in zip(questions, chains)) == doc
            for q, c in zip(questions, chains):  # each chain reads out its own question, rightly
                nums, ops = chain_is_right(c)
                assert "Compute " + " ".join([str(nums[0])] + [f"{o} {n}" for o, n in zip(ops, nums[1:])]) == q
            continue
        question, completion = found.group(1), doc.split("Assistant:", 1)[1]
        gold = value(question)
        if completion.startswith(" <think> ") and "\\boxed{" in completion:
            counts["r1"] += 1
            assert doc.startswith("User: ") and completion.endswith(f"\\boxed{{{gold}}}.")
            chain_is_right(CHAIN.search(completion).group(0))
        elif arith.GUESS_REASONING in completion or completion.startswith(" The answer is"):
            guessed = int(re.search(r"(\d+)(?: </answer>|\.)$", completion).group(1))
            assert abs(guessed - gold) <= arith.GUESS_SPREAD or guessed == 0
            counts["guess" if "<answer>" in completion else "bare"] += 1
        else:
            chain = CHAIN.search(completion).group(0)
            nums, ops = chain_is_right(chain)
            answer = int(re.search(r"(\d+)(?: </answer>|\.)$", completion).group(1))
            assert answer == int(chain.rstrip(".").split(" is ")[-1])
            if "<think>" not in completion:
                counts["untagged"] += 1
                assert completion == f" {chain} The answer is {gold}."
                continue
            assert re.fullmatch(r" <think> .+ </think> <answer> \d+ </answer>", completion)
            read = "Compute " + " ".join([str(nums[0])] + [f"{o} {n}" for o, n in zip(ops, nums[1:])])
            if read == question:
                counts["clean"] += 1
                assert answer == gold
            else:  # a misread: one operator flipped or one operand off by one, arithmetic still right
                counts["slip"] += 1
                q_nums, q_ops = parse(question.removeprefix("Compute ").replace("+", "plus").replace("-", "minus"))
                diffs = sum(a != b for a, b in zip(nums, q_nums)) + sum(a != b for a, b in zip(ops, q_ops))
                assert diffs == 1 and answer != gold
    # 1000 docs: about 150 drills, 150 r1 and 140 of each R1-Zero form
    assert all(80 < n < 220 for n in counts.values()), counts


def test_code_switched_chains_say_the_same_right_steps_in_two_languages():
    from r1flow.rewards import mixes_languages

    english = pretraining_corpus(400, 3, CorpusMix())
    assert english == pretraining_corpus(400, 3, CorpusMix(mixed_language=0.0))  # 0 draws nothing
    assert not any(mixes_languages(doc.split("Assistant:")[-1]) for doc in english)
    mixed = pretraining_corpus(2000, 3, CorpusMix(mixed_language=0.5))
    switched = [doc for doc in mixed if re.search("[加减是]", doc)]
    # worked chains are ~60% of documents (default mix), half of them switch unless every step
    # drew the same language: about 0.6 × 0.5 × 0.8 ≈ 24% of documents
    assert 0.15 < len(switched) / len(mixed) < 0.35
    assert sum(mixes_languages(doc.split("Assistant:")[-1]) for doc in switched) > 0.6 * len(switched)
    for doc in switched:
        back = re.sub("[加减是]", lambda m: {"加": "plus", "减": "minus", "是": "is"}[m.group(0)], doc)
        for chain in CHAIN.findall(back):
            chain_is_right(chain)
    assert arith.steps_text(((7, 5, 3), ("+", "-")), ("zh", "en", "zh")) == "7 加 5 减 3 is 12 minus 3 是 9."


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


def stated_problems(doc: str) -> set[str]:
    """Canonical keys of every problem a document states: its question and each chain's start."""
    keys = {canonical_key(m) for m in QUESTION.findall(doc)}
    for chain in CHAIN.findall(doc):
        nums, ops = parse(chain.split(" is ")[0])
        keys.add("".join([str(nums[0])] + [f"{o}{n}" for o, n in zip(ops, nums[1:])]))
    return keys


def test_no_heldout_problem_in_any_training_text():
    held = heldout_keys()
    mix = CorpusMix(clean=0.2, slip=0.4, guess=0.2, untagged=0.1, bare=0.1, r1_fraction=0.1, drill_fraction=0.3)
    docs = pretraining_corpus(20000, 0, mix)
    corpus_keys = set().union(*(stated_problems(d) for d in docs))
    prompts = rl_prompts(4000, 0) + generate_problems(4000, 7)
    assert len(corpus_keys) > 10000
    assert not corpus_keys & held
    assert not {canonical_key(p.question) for p in prompts} & held
    assert not {p.question for p in prompts} & {r["question"] for r in load_heldout()}
    # the exclusion is doing work: the same draws without it hit held-out problems
    raw = arith._exprs(20000, 0, TaskParams(), frozenset(), unique=False)
    assert len({canonical_key(arith.question_text(e)) for e in raw} & held) > 100


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
    with pytest.raises(ValidationError, match="drill_fraction"):
        CorpusMix(r1_fraction=0.6, drill_fraction=0.6)
    with pytest.raises(ValidationError, match="slip"):
        CorpusMix(slip=-0.1)
