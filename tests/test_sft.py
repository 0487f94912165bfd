"""The SFT/pretraining loop (paper §2.3.3 SFT, §2.4 distillation, and the CPU presets' base
pretraining) on tiny models: prompt masking, learning, determinism, the shared-prefix shortcut,
the schedule, and base-model pretraining at the micro size."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from r1flow.data.arith import CorpusMix, TaskParams, generate_problems
from r1flow.modeling import ModelArch, build_model, train_tokenizer
from r1flow.templates import r1_zero_completion, render_prompt
from r1flow.tracking import ListTracker
from r1flow.train.pretrain import PretrainParams, pretrain_base
from r1flow.train.sft import (IGNORE, SFTParams, batch_loss, collate, encode, epoch_order, lr_factor, token_loss,
                              train_sft)

TINY = ModelArch(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def data():
    problems = generate_problems(24, 0)
    examples = [
        {"prompt": render_prompt(p.question, "r1_zero"), "completion": r1_zero_completion(p.solution_steps, p.answer)}
        for p in problems
    ]
    tokenizer = train_tokenizer([e["prompt"] + e["completion"] for e in examples], 320)
    return examples, tokenizer


def fresh_model(tokenizer, seed: int = 0):
    return build_model(TINY, tokenizer, seed=seed)


def test_prompt_positions_are_masked_and_only_completion_tokens_count(data):
    examples, tok = data
    rows = encode(examples[:4], tok, 512, completion_only=True)
    for example, (ids, labels) in zip(examples, rows):
        n_prompt = len(tok(example["prompt"], add_special_tokens=False)["input_ids"])
        assert labels[:n_prompt] == [IGNORE] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:]
        assert ids[-1] == tok.eos_token_id  # EOS appended to the completion
    model = fresh_model(tok)
    batch = collate(rows, tok.pad_token_id)
    loss, count = batch_loss(model, batch)
    # independent computation: cross-entropy of completion tokens only, read off the raw logits
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    terms = []
    for i, (ids, labels) in enumerate(rows):
        first = labels.index(next(x for x in labels if x != IGNORE))
        for t in range(first, len(ids)):
            terms.append(F.cross_entropy(logits[i, t - 1], torch.tensor(ids[t])))
    assert count == len(terms)
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    full_rows = encode(examples[:4], tok, 512, completion_only=False)
    assert all(labels == ids for ids, labels in full_rows)  # pretraining mode: every token is a label
    assert batch_loss(model, collate(full_rows, tok.pad_token_id))[1] > count


def test_prompt_predictions_get_no_gradient(data):
    """Masked prompt positions cannot move the loss: its gradient w.r.t. their logits is exactly 0."""
    examples, tok = data
    rows = encode(examples[:3], tok, 512, completion_only=True)
    batch = collate(rows, tok.pad_token_id)
    logits = fresh_model(tok)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits.retain_grad()
    total, count = token_loss(logits, batch["labels"])
    total.backward()
    for i, (ids, labels) in enumerate(rows):
        n_prompt = labels.count(IGNORE)
        # position t predicts token t+1: positions 0..n_prompt-2 predict prompt tokens
        assert torch.all(logits.grad[i, : n_prompt - 1] == 0)
        assert torch.all(logits.grad[i, n_prompt - 1 : len(ids) - 1].abs().sum(-1) > 0)
        assert torch.all(logits.grad[i, len(ids) - 1 :] == 0)  # the last token and padding


def test_changing_the_prompt_cannot_change_which_tokens_are_scored(data):
    examples, tok = data
    a = {"prompt": "User: Compute 1 + 2. Assistant:", "completion": " <think> x </think> <answer> 3 </answer>"}
    b = {"prompt": "A much longer prompt that says other things. User: Compute 1 + 2. Assistant:",
         "completion": a["completion"]}
    (ids_a, lab_a), (ids_b, lab_b) = encode([a, b], tok, 512, completion_only=True)
    assert [x for x in lab_a if x != IGNORE] == [x for x in lab_b if x != IGNORE]
    assert len(ids_b) > len(ids_a)


def test_a_few_steps_lower_the_training_loss(data):
    examples, tok = data
    model = fresh_model(tok)
    batch = collate(encode(examples, tok, 512, True), tok.pad_token_id)
    with torch.no_grad():
        before = batch_loss(model, batch)[0].item()
    tracker = ListTracker()
    params = SFTParams(lr=3e-3, max_steps=30, batch_size=8, log_every=10, warmup_ratio=0.1)
    final = train_sft(model, tok, examples, params, tracker)
    with torch.no_grad():
        after = batch_loss(model, batch)[0].item()
    assert after < 0.7 * before, (before, after)
    assert final["steps"] == 30 and final["tokens"] > 0
    for key in ("loss", "lr", "tokens_per_s", "grad_norm", "train_flops"):
        assert len(tracker.series(key)) == 3, key
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    n = sum(p.numel() for p in model.parameters()) - (embed.numel() if head is not embed else 0)
    assert final["train_flops"] == 6 * n * final["tokens"] == tracker.series("train_flops")[-1]  # 6·N·T
    assert tracker.series("loss")[-1] < tracker.series("loss")[0]


def test_training_is_deterministic_given_a_seed(data):
    examples, tok = data
    params = SFTParams(lr=2e-3, max_steps=6, batch_size=5, log_every=1, seed=3)
    runs = []
    for _ in range(2):
        model, tracker = fresh_model(tok, seed=1), ListTracker()
        train_sft(model, tok, examples, params, tracker)
        runs.append((tracker.series("loss"), [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(x, y) for x, y in zip(runs[0][1], runs[1][1]))
    other, tracker = fresh_model(tok, seed=1), ListTracker()
    train_sft(other, tok, examples, params.model_copy(update={"seed": 4}), tracker)
    assert tracker.series("loss") != runs[0][0]


def test_epoch_order_is_a_pure_permutation_of_seed_and_epoch():
    assert epoch_order(50, 1, 0) == epoch_order(50, 1, 0)
    assert sorted(epoch_order(50, 1, 0)) == list(range(50))
    assert epoch_order(50, 1, 0) != epoch_order(50, 1, 1) != epoch_order(50, 2, 1)


def test_shared_prefix_shortcut_gives_the_same_loss_and_gradients(data):
    examples, tok = data
    mixed = examples[:5] + [{"prompt": "", "completion": "7 plus 5 is 12."}] + examples[5:8]
    for completion_only in (True, False):
        batch = collate(encode(mixed, tok, 512, completion_only), tok.pad_token_id)
        results = []
        for min_prefix in (0, 16):
            model = fresh_model(tok)
            loss, count = batch_loss(model, batch, min_prefix)
            loss.backward()
            results.append((loss.item(), count, [p.grad.clone() for p in model.parameters()]))
        (l0, c0, g0), (l1, c1, g1) = results
        assert c0 == c1 and l0 == pytest.approx(l1, rel=1e-5)
        assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(g0, g1))


def test_micro_batches_accumulate_the_full_batch_gradient(data):
    """Rows of unequal label counts (a bare completion among templated ones) in micro-batches of 3:
    same loss and gradient as the whole batch at once (each micro-batch weighted by its labels)."""
    from r1flow.train.sft import accumulate

    examples, tok = data
    rows = encode(examples[:5] + [{"prompt": "", "completion": "7 plus 5 is 12."}] + examples[5:8], tok, 512, True)
    results = []
    for micro in (0, 3, 1):
        model = fresh_model(tok)
        value, seen = accumulate(model, rows, tok.pad_token_id, SFTParams(micro_batch_size=micro, min_shared_prefix=0))
        results.append((value, seen, [p.grad.clone() for p in model.parameters()]))
    (v0, s0, g0) = results[0]
    for value, seen, grads in results[1:]:
        assert seen == s0 and value == pytest.approx(v0, rel=1e-5)
        assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(g0, grads))


def test_learning_rate_schedule():
    # 10 steps, 2 warmup: 0.5, 1.0, then cosine over the 8 remaining steps down to min_ratio
    assert [lr_factor(s, 10, 2, "cosine", 0.0) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(6, 10, 2, "cosine", 0.0) == pytest.approx(0.5)  # halfway: (1 + cos(pi/2)) / 2
    assert lr_factor(10, 10, 2, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(4, 10, 2, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(7, 10, 2, "constant", 0.0) == 1.0


def test_on_step_sees_every_step_with_its_data_position(data):
    examples, tok = data
    seen = []
    params = SFTParams(max_steps=7, batch_size=10, log_every=100)
    train_sft(fresh_model(tok), tok, examples, params, on_step=lambda s: seen.append((s.step, s.epoch, s.batch_in_epoch)))
    # 24 examples, batches of 10: 3 batches per epoch
    assert seen == [(1, 0, 1), (2, 0, 2), (3, 0, 3), (4, 1, 1), (5, 1, 2), (6, 1, 3), (7, 2, 1)]


def test_invalid_params_name_the_field():
    with pytest.raises(ValueError, match="batch_size"):
        SFTParams(batch_size=0)
    with pytest.raises(ValueError, match="schedule"):
        SFTParams(schedule="linear")
    with pytest.raises(ValueError, match="extra"):
        SFTParams(learning_rate=1e-3)


def test_pretrain_base_builds_a_tokenizer_and_lowers_the_loss():
    corpus = PretrainParams(num_docs=300, vocab_size=320, task=TaskParams(), mix=CorpusMix())
    tracker = ListTracker()
    params = SFTParams(lr=1e-2, max_steps=60, batch_size=16, log_every=20, completion_only_loss=False)
    model, tok = pretrain_base(TINY, corpus, params, tracker=tracker)
    assert tok.padding_side == "left" and len(tok) <= 320
    assert model.config.vocab_size == len(tok)
    losses = tracker.series("loss")
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_chunked_loss_equals_the_full_logits_loss_in_value_and_gradient(data):
    """``plain_loss`` (the head over chunks of positions) against cross-entropy of the whole
    ``[B, L, V]`` logits, on right-padded rows with prompt positions masked."""
    import r1flow.grpo.logprobs as logprobs
    from r1flow.train.sft import plain_loss

    examples, tokenizer = data
    batch = collate(encode(examples[:4], tokenizer, 64, True), tokenizer.pad_token_id)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    model = fresh_model(tokenizer)
    full, count = token_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
    (g_full,) = torch.autograd.grad(full, model.get_output_embeddings().weight)
    chunk = logprobs.LOGIT_CHUNK_ELEMENTS
    try:
        logprobs.LOGIT_CHUNK_ELEMENTS = 3 * len(tokenizer)  # a few positions per chunk
        chunked, n = plain_loss(model, ids, mask, labels)
    finally:
        logprobs.LOGIT_CHUNK_ELEMENTS = chunk
    (g_chunked,) = torch.autograd.grad(chunked, model.get_output_embeddings().weight)
    assert n == count and torch.allclose(chunked, full, rtol=1e-5)
    assert torch.allclose(g_chunked, g_full, atol=1e-6)
