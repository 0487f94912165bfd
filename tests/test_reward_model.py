"""Bradley–Terry reward model on the synthetic polite-reply preference task (CPU, tiny)."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from pydantic import ValidationError

from r1flow.data.io import dataset_digest
from r1flow.data.preferences import (BAD_KINDS, NONREASONING_PATH, is_good_reply, load_nonreasoning,
                                     nonreasoning_rows, preference_pairs, topic_of)
from r1flow.modeling import ModelArch, save_model, train_tokenizer
from r1flow.tracking import ListTracker
from r1flow.train.reward_model import (RewardModelParams, RewardModelScorer, bradley_terry_loss,
                                       build_reward_model, rm_text, train_reward_model)

RM_ARCH = ModelArch(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=192,
                    max_positions=128)



def test_bradley_terry_loss_hand_values():
    # equal rewards: -log σ(0) = log 2; margin 2: -log σ(2) = log(1 + e^-2) = 0.126928
    loss = bradley_terry_loss(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]))
    assert loss.item() == pytest.approx((math.log(2) + math.log(1 + math.exp(-2))) / 2, abs=1e-6)
    assert bradley_terry_loss(torch.tensor([-2.0]), torch.tensor([0.0])).item() == pytest.approx(
        math.log(1 + math.exp(2)), abs=1e-5)  # a wrong ranking costs more than log 2


def test_preference_pairs_follow_the_rule():
    pairs = preference_pairs(300, seed=5)
    assert pairs == preference_pairs(300, seed=5) and pairs != preference_pairs(300, seed=6)
    assert all(is_good_reply(p["prompt"], p["chosen"]) for p in pairs)
    assert not any(is_good_reply(p["prompt"], p["rejected"]) for p in pairs)
    assert [p["kind"] for p in pairs[:6]] == list(BAD_KINDS) * 2
    off_topic = next(p for p in pairs if p["kind"] == "off_topic")
    assert topic_of(off_topic["prompt"]) not in off_topic["rejected"]  # only the topic differs
    assert is_good_reply("Reply politely: My garden is wet.", "Hello! Thank you for asking about the garden.")
    assert not is_good_reply("Reply politely: My garden is wet.", "Hello! Thank you thank you thank you garden.")
    assert not is_good_reply("Reply politely: My garden is wet.", "Hello! The garden is fine.")  # not polite


def test_nonreasoning_file_is_the_generator_output():
    rows = load_nonreasoning()
    assert rows == nonreasoning_rows() and len(rows) == 300
    # byte for byte what scripts/make_nonreasoning.py writes (canonical JSONL)
    assert hashlib.sha256(NONREASONING_PATH.read_bytes()).hexdigest() == dataset_digest(nonreasoning_rows())
    assert all(is_good_reply(r["prompt"], r["response"]) for r in rows)
    assert len({r["prompt"] for r in rows}) > 100


def test_params_validate_naming_the_field():
    with pytest.raises(ValidationError, match="steps"):
        RewardModelParams(steps=0)
    with pytest.raises(ValidationError, match="lr_typo"):
        RewardModelParams(lr_typo=1.0)


def test_reward_model_learns_the_preference_and_reloads(tmp_path):
    train, held_out = preference_pairs(2000, seed=1), preference_pairs(300, seed=2)
    tokenizer = train_tokenizer([f"{p['prompt']}\n{p['chosen']}\n{p['rejected']}" for p in train[:300]], 400)
    params = RewardModelParams(steps=150, batch_size=32, lr=3e-3, eval_every=50, seed=0)
    tracker = ListTracker()
    model, metrics = train_reward_model(tokenizer, RM_ARCH, train, held_out, params, tracker)
    assert sum(p.numel() for p in model.parameters()) < 600_000
    assert metrics["eval_accuracy"] >= 0.8, metrics
    assert tracker.series("eval_accuracy")[-1] == metrics["eval_accuracy"]
    assert tracker.series("train_loss")[-1] < tracker.series("train_loss")[0] < math.log(2) + 0.1

    save_model(model, tokenizer, tmp_path / "rm")
    scorer = RewardModelScorer(tmp_path / "rm", batch_size=16)
    prompts = [p["prompt"] for p in held_out]
    chosen, rejected = scorer(prompts, [p["chosen"] for p in held_out]), scorer(prompts, [p["rejected"] for p in held_out])
    assert sum(c > r for c, r in zip(chosen, rejected)) / len(held_out) >= 0.8
    in_memory = RewardModelScorer(model, tokenizer)(prompts[:8], [p["chosen"] for p in held_out[:8]])
    assert in_memory == pytest.approx(chosen[:8], abs=1e-4)  # the checkpoint is the trained model


def test_scorer_contract(tmp_path):
    tokenizer = train_tokenizer(["Reply politely: hi\nHello!"] * 5, 280)
    model = build_reward_model(RM_ARCH, tokenizer, seed=0)
    scorer = RewardModelScorer(model, tokenizer, batch_size=2)
    scores = scorer(["a", "bb", "a"], ["x", "yy yy", "x"])
    assert len(scores) == 3 and scores[0] == pytest.approx(scores[2], abs=1e-5)  # batching/padding-free
    assert rm_text(tokenizer, "p", "r") == "p\nr"
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        scorer(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="tokenizer"):
        RewardModelScorer(model)
