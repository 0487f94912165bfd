"""Per-token log-probs on a tiny Qwen2: left padding, temperature, EOS masking, one GRPO step end to end."""

from __future__ import annotations

import os

import pytest
import torch

from r1flow.grpo.logprobs import completion_mask, position_ids_from_mask, token_logprobs
from r1flow.grpo.loss import group_advantages, grpo_loss
from r1flow.modeling import ModelArch, build_model, train_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TEXTS = ["User: 12 + 7 - 3 = ? Assistant: <think> 12 plus 7 is 19. 19 minus 3 is 16. </think> "
         "<answer> 16 </answer>", "User: 5 + 30 = ? Assistant: <think> 35 </think> <answer> 35 </answer>"] * 10
ARCH = ModelArch(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def tok():
    tokenizer = train_tokenizer(TEXTS, 300)
    tokenizer.padding_side = "left"
    return tokenizer


def _model(tok, seed: int = 0):
    return build_model(ARCH, tok, seed=seed).float().eval()


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_left_padded_batch_equals_unpadded_rows(tok):
    model = _model(tok)
    prompts = ["User: 5 + 30 = ? Assistant:", "12 + 7", "User: 12 + 7 - 3 = ? Assistant: <think>"]
    batch = tok(prompts, return_tensors="pt", padding=True)  # left-padded to one length
    assert (batch["attention_mask"] == 0).any(), "prompts must differ in length for this test to mean anything"
    completions = torch.randint(1, len(tok), (3, 7), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([batch["input_ids"], completions], dim=1)
    attention = torch.cat([batch["attention_mask"], torch.ones_like(completions)], dim=1)
    start = batch["input_ids"].size(1)
    with torch.no_grad():
        batched = token_logprobs(model, ids, attention, start, temperature=1.0)  # [3, 7]
        for i, prompt in enumerate(prompts):
            alone = torch.tensor([tok(prompt)["input_ids"] + completions[i].tolist()])
            single = token_logprobs(model, alone, torch.ones_like(alone), alone.size(1) - 7, temperature=1.0)
            assert torch.allclose(batched[i], single[0], atol=1e-5), (i, batched[i], single[0])


def test_model_gets_mask_positions_and_only_completion_logits(tok):
    # Under RoPE a row's constant position offset cancels, so the equality test above would pass
    # without position ids: check what the model is handed instead, and that the LM head (hence the
    # log-softmax) sees only the L positions that predict completion tokens.
    model = _model(tok)
    seen = {}
    model.get_decoder().register_forward_pre_hook(lambda m, a, kw: seen.update(pos=kw["position_ids"]),
                                                  with_kwargs=True)
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.update(head_in=a[0].shape))
    ids = torch.randint(1, len(tok), (2, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1], [1] * 9])
    with torch.no_grad():
        out = token_logprobs(model, ids, mask, 6, temperature=1.0)
    assert out.shape == (2, 3)
    assert seen["pos"].tolist() == [[0, 0, 0, 0, 1, 2, 3, 4, 5], list(range(9))]
    assert seen["head_in"] == (2, 3, ARCH.hidden_size)


def test_temperature_divides_logits(tok):
    model = _model(tok)
    ids = torch.randint(1, len(tok), (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, 4:-1]  # predicts tokens 5..11
        for t in (1.0, 0.6):
            want = torch.log_softmax(logits / t, dim=-1).gather(-1, ids[:, 5:, None]).squeeze(-1)
            assert torch.allclose(token_logprobs(model, ids, mask, 5, temperature=t), want, atol=1e-5)
        cold = token_logprobs(model, ids, mask, 5, temperature=0.6)
        warm = token_logprobs(model, ids, mask, 5, temperature=1.0)
    assert (cold - warm).abs().max() > 1e-3
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(model, ids, mask, 5, temperature=0.0)


def test_completion_mask_stops_after_first_eos():
    e, p = 0, 9
    ids = torch.tensor([[5, 6, e, 7, e], [5, e, e, e, e], [5, 6, 7, 8, 4], [e, 5, 6, 7, 8]])
    assert completion_mask(ids, e).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1],
                                                [1, 0, 0, 0, 0]]
    padded = torch.tensor([[5, 6, e, p, p], [5, 6, p, p, p]])
    assert completion_mask(padded, e, pad_id=p).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert completion_mask(padded, e, pad_id=e).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def _group(tok, group_size: int, seed: int):
    """One prompt, ``group_size`` random completions (one ends early with EOS): ids, attention, start, mask."""
    prompt = torch.tensor([tok("User: 5 + 30 = ? Assistant:")["input_ids"]]).repeat(group_size, 1)
    completions = torch.randint(1, len(tok), (group_size, 6), generator=torch.Generator().manual_seed(seed))
    completions[0, 3] = tok.eos_token_id
    mask = completion_mask(completions, tok.eos_token_id)
    ids = torch.cat([prompt, completions], dim=1)
    return ids, torch.cat([torch.ones_like(prompt), mask], dim=1), prompt.size(1), mask


def _step(model, optimizer, ids, attention, start, mask, rewards, group_size):
    adv = group_advantages(rewards, group_size)
    logp = token_logprobs(model, ids, attention, start, temperature=1.0)
    loss, _ = grpo_loss(logp, logp.detach(), None, adv, mask, beta=0.0, eps_low=0.2, eps_high=0.2,
                        mode="sequence_mean")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_step_raises_logprob_of_best_completion(tok, optimizer):
    model = _model(tok)
    ids, attention, start, mask = _group(tok, 4, seed=2)
    rewards = torch.tensor([0.0, 1.0, 0.2, 0.0])  # completion 1 is best
    opt = (torch.optim.SGD(model.parameters(), lr=0.5) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=1e-3))

    def seq_logp():
        with torch.no_grad():
            return (token_logprobs(model, ids, attention, start, temperature=1.0) * mask).sum(1)

    before = seq_logp()
    _step(model, opt, ids, attention, start, mask, rewards, 4)
    after = seq_logp()
    assert after[1] > before[1] + 1e-3, (before, after)
    assert after[0] < before[0] and after[3] < before[3], (before, after)  # negative advantages fall


def test_equal_rewards_leave_parameters_unchanged(tok):
    # 7 equal rewards of 0.1: the float32 mean is off by an ulp, which must not leak into a step —
    # Adam would turn even a 1e-5 gradient into a full lr-sized update.
    model = _model(tok)
    ids, attention, start, mask = _group(tok, 7, seed=3)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=0.0)
    _step(model, opt, ids, attention, start, mask, torch.full((7,), 0.1), 7)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    _step(model, opt, ids, attention, start, mask, torch.tensor([0.1] * 6 + [0.2]), 7)
    assert not all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_shared_prompt_logprobs_equal_full_rows_in_value_and_gradient(tok):
    """Each distinct prompt run once, its cache repeated over its rows: the same log-probs and the
    same parameter gradients as running every full row (two prompts × 3 rows, left-padded, one
    row's completion ended early by EOS)."""
    from r1flow.engine import left_pad
    from r1flow.grpo.logprobs import shared_prompt_logprobs

    model = _model(tok).train()
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in ("12 + 7", "User: 5 + 30 = ? Assistant:")]
    prompt_ids, prompt_mask = left_pad([prompts[i] for i in (0, 0, 0, 1, 1, 1)], tok.pad_token_id)
    completions = torch.randint(3, len(tok) - 1, (6, 7), generator=torch.Generator().manual_seed(0))
    attention = torch.ones_like(completions)
    attention[1, 4:] = 0
    full = token_logprobs(model, torch.cat([prompt_ids, completions], 1), torch.cat([prompt_mask, attention], 1),
                          prompt_ids.size(1), temperature=0.7)
    (full * attention).sum().backward()
    full_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    shared = shared_prompt_logprobs(model, prompt_ids, prompt_mask, completions, attention, temperature=0.7)
    (shared * attention).sum().backward()
    assert torch.allclose(shared * attention, full * attention, atol=1e-5)
    for ours, ref in zip((p.grad for p in model.parameters()), full_grads):
        assert torch.allclose(ours, ref, atol=1e-5)


def test_chunked_logprobs_equal_the_full_logits_path_in_values_and_gradients(tok):
    """Chunks of 1 and 3 positions (each recomputed in backward) against one full fp32 logits tensor."""
    from r1flow.grpo.logprobs import chunked_logprobs

    model = _model(tok)
    ids = torch.randint(1, len(tok), (3, 10), generator=torch.Generator().manual_seed(5))
    hidden = model.get_decoder()(input_ids=ids).last_hidden_state[:, :-1]  # [3, 9, H]
    head, targets = model.get_output_embeddings(), ids[:, 1:]
    full = torch.log_softmax(head(hidden).float() / 0.7, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    (grad_full,) = torch.autograd.grad(full.sum(), head.weight, retain_graph=True)
    vocab = head.weight.size(0)
    for positions in (1, 3):
        chunked = chunked_logprobs(head, hidden, targets, 0.7, chunk_elements=3 * positions * vocab)
        (grad,) = torch.autograd.grad(chunked.sum(), head.weight, retain_graph=True)
        assert torch.allclose(chunked, full, atol=1e-5) and torch.allclose(grad, grad_full, atol=1e-5)
