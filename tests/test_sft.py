"""SFT (paper §2.3.3): loss on completion tokens only, learning on a tiny model, determinism."""

from __future__ import annotations

import pytest
import torch

from r1flow.modeling import ModelArch, build_model, train_tokenizer
from r1flow.train.sft import IGNORE, SFTParams, batch_loss, collate, encode, train_sft

ARCH = ModelArch(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
EXAMPLES = [{"prompt": f"User: Compute {a} + {b}\nAssistant: <think>",
             "completion": f" {a} plus {b} is {a + b}. </think> The answer is \\boxed{{{a + b}}}."}
            for a in range(1, 7) for b in range(1, 5)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([e["prompt"] + e["completion"] for e in EXAMPLES] * 5, 300)


def test_prompt_tokens_are_masked_and_eos_is_trained(tok):
    (ids, labels), = encode(EXAMPLES[:1], tok, max_len=256, completion_only=True)
    n_prompt = len(tok(EXAMPLES[0]["prompt"], add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
    (_, full), = encode(EXAMPLES[:1], tok, max_len=256, completion_only=False)
    assert full == ids  # pretraining mode: every token is a label


def test_loss_is_the_mean_over_completion_tokens_only(tok):
    import torch.nn.functional as F

    model = build_model(ARCH, tok, seed=0)
    rows = encode(EXAMPLES[:4], tok, 256, completion_only=True)
    with torch.no_grad():
        loss, count = batch_loss(model, collate(rows, tok.pad_token_id))
    # by hand: each example alone, cross-entropy on the tokens after its prompt only
    total, n = 0.0, 0
    for example, (ids, _) in zip(EXAMPLES[:4], rows):
        n_prompt = len(tok(example["prompt"], add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        targets = torch.tensor(ids[n_prompt:])
        total += float(F.cross_entropy(logits[n_prompt - 1:-1], targets, reduction="sum"))
        n += len(targets)
    assert count == n
    assert float(loss) == pytest.approx(total / n, rel=1e-5)


def test_a_few_steps_lower_the_loss_and_are_deterministic(tok):
    params = SFTParams(lr=3e-3, max_steps=30, batch_size=8, seed=1, log_every=5)

    def run():
        model = build_model(ARCH, tok, seed=0)
        batch = collate(encode(EXAMPLES, tok, 256, True), tok.pad_token_id)
        with torch.no_grad():
            before = float(batch_loss(model, batch)[0])
        train_sft(model, tok, EXAMPLES, params)
        with torch.no_grad():
            after = float(batch_loss(model, batch)[0])
        return before, after, [p.detach().clone() for p in model.parameters()]

    before, after, weights = run()
    assert after < before - 1.0  # 30 steps take off well over a nat (measured 5.74 -> 3.58)
    _, after_again, weights_again = run()
    assert after_again == after and all(torch.equal(a, b) for a, b in zip(weights, weights_again))
