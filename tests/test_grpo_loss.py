"""GRPO math: hand-derived values, a loop reference, micro-batch gradient equality, TRL 1.16 parity."""

from __future__ import annotations

import math
import os

import pytest
import torch

from r1flow.grpo.loss import (
    aggregate,
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    k1_kl,
    k3_kl,
    zero_variance_groups,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MODES = ["sequence_mean", "token_mean", "fixed_length"]


# ---------------------------------------------------------------- advantages

def test_group_advantages_hand_values():
    # [1,0,0,1]: mean 0.5, deviations ±0.5, unbiased var = 4·0.25/3 = 1/3, std = 0.577350;
    # A = ±0.5 / (0.577350 + 1e-4) = ±0.865876. (A biased std, 0.5, would give ±0.9998.)
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4)
    assert torch.allclose(adv, torch.tensor([0.865876, -0.865876, -0.865876, 0.865876]), atol=1e-5)
    # Dr. GRPO: no std division, A = r − mean.
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4, scale="none")
    assert torch.equal(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # "batch": group means 0.25 and 0.75 → centred [.75,-.25,-.25,-.25, .25,.25,.25,-.75];
    # whole-batch std: mean 0.5, every deviation 0.5, var = 8·0.25/7 = 2/7, std = 0.534522.
    adv = group_advantages(torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 0]), 4, scale="batch")
    want = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.25, 0.25, 0.25, -0.75]) / (0.534522 + 1e-4)
    assert torch.allclose(adv, want, atol=1e-5)


def test_equal_rewards_give_exactly_zero_advantages():
    # 7 copies of 0.1 in float32: their mean differs from 0.1 by ~7e-9, which divided by
    # (std ~8e-9 + 1e-4) would leave A ≈ 7e-5 — enough for Adam to take a full-size step.
    rewards = torch.tensor([0.1] * 7 + [1.0, 0, 0, 0, 0, 0, 0])
    assert zero_variance_groups(rewards, 7).tolist() == [True, False]
    for scale in ("group", "batch", "none"):
        adv = group_advantages(rewards, 7, scale=scale)
        assert torch.count_nonzero(adv[:7]) == 0
        assert torch.count_nonzero(adv[7:]) == 7
    naive = rewards[:7] - rewards[:7].mean()
    assert torch.count_nonzero(naive) > 0, "float32 mean of equal values is exact here; pick another value"


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_trl_formula(scale):
    # TRL's _generate_and_score_completions (sum_then_normalize) with its own nanstd:
    # A = r − group mean, divided by (nanstd + 1e-4) over the group or the batch unless "none".
    from trl.trainer.utils import nanstd

    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        rewards = torch.randint(0, 3, (24,), generator=g).float() / 2  # [B*G], B=4, G=6
        mean = rewards.view(-1, 6).mean(1).repeat_interleave(6)
        std = nanstd(rewards.view(-1, 6), dim=1).repeat_interleave(6) if scale == "group" else nanstd(rewards)
        want = rewards - mean if scale == "none" else (rewards - mean) / (std + 1e-4)
        assert torch.allclose(group_advantages(rewards, 6, scale=scale), want, atol=1e-6)


def test_group_advantages_reject_bad_shapes():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="rank")


# ---------------------------------------------------------------- clipping and KL

def test_clipped_surrogate_hand_values():
    # ε_low = 0.2, ε_high = 0.28. Rows: (ρ, A) =
    #   (1.5, +2): −min(3.0, 1.28·2 = 2.56) = −2.56, clipped high, no gradient
    #   (1.5, −2): −min(−3.0, −2.56) = 3.0, not clipped, d/dlogp (−ρA) = −ρA = 3.0
    #   (0.5, −2): −min(−1.0, 0.8·−2 = −1.6) = 1.6, clipped low, no gradient
    #   (0.5, +2): −min(1.0, 1.6) = −1.0, not clipped, d/dlogp = −ρA = −1.0
    ratio = torch.tensor([[1.5], [1.5], [0.5], [0.5]])
    old = torch.zeros(4, 1)
    logp = ratio.log().requires_grad_()
    adv = torch.tensor([2.0, -2.0, -2.0, 2.0])
    loss, clipped = clipped_surrogate(logp, old, adv, 0.2, 0.28)
    assert torch.allclose(loss, torch.tensor([[-2.56], [3.0], [1.6], [-1.0]]))
    assert clipped.squeeze(1).tolist() == [True, False, True, False]
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[0.0], [3.0], [0.0], [-1.0]]))


def test_kl_hand_values():
    # π_θ = 0.5, π_ref = 0.25: r = 0.5, k3 = 0.5 − ln 0.5 − 1 = 0.193147, k1 = ln 2 = 0.693147
    # π_θ = 0.25, π_ref = 0.5: r = 2, k3 = 2 − ln 2 − 1 = 0.306853; equal probabilities: 0.
    logp = torch.tensor([0.5, 0.25, 0.3]).log()
    ref = torch.tensor([0.25, 0.5, 0.3]).log()
    assert torch.allclose(k3_kl(logp, ref), torch.tensor([0.193147, 0.306853, 0.0]), atol=1e-6)
    assert torch.allclose(k1_kl(logp, ref), torch.tensor([0.693147, -0.693147, 0.0]), atol=1e-6)


def test_k3_gradient_is_forward_kl_gradient_not_reverse():
    # Exact expectation over a 5-way categorical: E_{y~π_θ}[∇k3(y)] = ∇KL(π_ref‖π_θ) ≠ ∇KL(π_θ‖π_ref),
    # while E_{π_θ}[k3] = KL(π_θ‖π_ref) in value (the module docstring's derivation).
    theta = torch.tensor([0.3, -1.0, 0.8, 0.0, 1.5], dtype=torch.float64, requires_grad=True)
    ref = torch.log_softmax(torch.tensor([1.0, 0.2, -0.5, 0.4, 0.1], dtype=torch.float64), 0)
    logp = torch.log_softmax(theta, 0)
    k3 = k3_kl(logp, ref)
    expected_k3 = (logp.exp().detach() * k3).sum()
    (grad_k3,) = torch.autograd.grad(expected_k3, theta, retain_graph=True)
    reverse = (logp.exp() * (logp - ref)).sum()
    forward = (ref.exp() * (ref - logp)).sum()
    (grad_reverse,) = torch.autograd.grad(reverse, theta, retain_graph=True)
    (grad_forward,) = torch.autograd.grad(forward, theta, retain_graph=True)
    assert torch.allclose(expected_k3, reverse)
    assert torch.allclose(grad_k3, grad_forward, atol=1e-12)
    assert (grad_k3 - grad_reverse).norm() > 0.1 * grad_reverse.norm()  # ~20% apart here
    # Weighting k3 by the ratio π_θ/π_old (TRL's use_bias_correction_kl; π_old = π_θ in value) adds
    # k3·∇log π_θ and recovers the reverse KL's gradient: E[∇(ρ·k3)] = ∇E_{π_θ}[k3].
    ratio = torch.exp(logp - logp.detach())
    (grad_weighted,) = torch.autograd.grad((logp.exp().detach() * ratio * k3).sum(), theta)
    assert torch.allclose(grad_weighted, grad_reverse, atol=1e-12)


# ---------------------------------------------------------------- aggregation

def test_aggregate_hand_values():
    # masked rows: [1, 2, ·] (2 tokens, sum 3) and [4, ·, ·] (1 token, sum 4)
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate(x, m, "sequence_mean").item() == pytest.approx((1.5 + 4) / 2)  # 2.75
    assert aggregate(x, m, "token_mean").item() == pytest.approx(7 / 3)
    assert aggregate(x, m, "fixed_length").item() == pytest.approx(7 / 6)  # 7 / (2 rows · 3)
    # as one micro-batch of a bigger rollout batch: 4 outputs, 10 tokens, max length 5
    assert aggregate(x, m, "sequence_mean", num_sequences=4).item() == pytest.approx(5.5 / 4)
    assert aggregate(x, m, "token_mean", total_tokens=10).item() == pytest.approx(0.7)
    assert aggregate(x, m, "fixed_length", num_sequences=4, max_len=5).item() == pytest.approx(7 / 20)
    with pytest.raises(ValueError, match="mode"):
        aggregate(x, m, "seq-mean")


def _random_batch(seed: int, n: int = 8, length: int = 7, beta_ref: bool = True):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, length, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(n, length, generator=g, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(n, length, generator=g, dtype=torch.float64) if beta_ref else None
    lengths = torch.randint(0, length + 1, (n,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    adv[1] = 0.0
    return logp, old, ref, adv, mask


def _loop_loss(logp, old, ref, adv, mask, beta, eps_low, eps_high, mode, max_len):
    """Per sequence, per token, in Python floats: the definition spelled out."""
    seq_terms, all_tokens, total = [], 0, 0.0
    for i in range(len(logp)):
        seq_sum, seq_tokens = 0.0, 0
        for t in range(len(logp[i])):
            if not mask[i][t]:
                continue
            ratio = math.exp(logp[i][t] - old[i][t])
            a = adv[i]
            term = -min(ratio * a, min(max(ratio, 1 - eps_low), 1 + eps_high) * a)
            if beta:
                d = ref[i][t] - logp[i][t]
                term += beta * (math.exp(d) - d - 1)
            seq_sum, seq_tokens = seq_sum + term, seq_tokens + 1
        seq_terms.append(seq_sum / max(seq_tokens, 1))
        all_tokens += seq_tokens
        total += seq_sum
    n = len(logp)
    return {"sequence_mean": sum(seq_terms) / n, "token_mean": total / max(all_tokens, 1),
            "fixed_length": total / (n * max_len)}[mode]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_vectorized_matches_loop(mode, beta):
    for seed in range(5):
        logp, old, ref, adv, mask = _random_batch(seed)
        loss, stats = grpo_loss(logp, old, ref, adv, mask, beta=beta, eps_low=0.2, eps_high=0.28, mode=mode,
                                max_len=10)
        lists = [x.tolist() for x in (logp, old, ref, adv, mask)]
        want = _loop_loss(*lists, beta, 0.2, 0.28, mode, max_len=10)
        assert loss.item() == pytest.approx(want, rel=1e-10, abs=1e-12)
        ratio = (logp - old).exp()
        low = ((ratio < 0.8) & (adv[:, None] < 0) & mask.bool()).sum() / mask.sum()
        high = ((ratio > 1.28) & (adv[:, None] > 0) & mask.bool()).sum() / mask.sum()
        assert stats["clip_fraction/low"].item() == pytest.approx(low.item())
        assert stats["clip_fraction/high"].item() == pytest.approx(high.item())
        assert 0 < stats["clip_fraction/low"] + stats["clip_fraction/high"] < 1
        assert stats["kl_k3"].item() > 0 and stats["num_tokens"].item() == mask.sum().item()


@pytest.mark.parametrize("mode", MODES)
def test_micro_batch_gradients_sum_to_full_batch(mode):
    logp, old, ref, adv, mask = _random_batch(seed=11, n=8)
    counts = dict(total_tokens=mask.sum().item(), num_sequences=8, max_len=10)
    kwargs = dict(beta=0.04, eps_low=0.2, eps_high=0.28, mode=mode, **counts)
    grads = {}
    for size in (8, 2, 1):  # all at once, 4 micro-batches, one output per micro-batch
        leaf = logp.clone().requires_grad_()
        total = 0.0
        for s in range(0, 8, size):
            part = slice(s, s + size)
            loss, _ = grpo_loss(leaf[part], old[part], ref[part], adv[part], mask[part], **kwargs)
            loss.backward()
            total += loss.item()
        grads[size] = (leaf.grad.clone(), total)
    for size in (2, 1):
        assert torch.allclose(grads[size][0], grads[8][0], atol=1e-14)
        assert grads[size][1] == pytest.approx(grads[8][1], rel=1e-12)
    assert grads[8][0].abs().sum() > 0


def test_grpo_loss_needs_ref_when_beta_nonzero():
    logp, old, _, adv, mask = _random_batch(0, beta_ref=False)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, None, adv, mask, beta=0.1, eps_low=0.2, eps_high=0.2, mode="token_mean")
    _, stats = grpo_loss(logp, old, None, adv, mask, beta=0.0, eps_low=0.2, eps_high=0.2, mode="token_mean")
    assert "kl_k3" not in stats


# ---------------------------------------------------------------- parity with TRL 1.16

TRL_MODES = {"grpo": "sequence_mean", "bnpo": "token_mean", "dapo": "token_mean", "dr_grpo": "fixed_length"}


@pytest.fixture(scope="module")
def saved_tiny_model(tmp_path_factory):
    from r1flow.modeling import ModelArch, build_model, save_model, train_tokenizer

    tok = train_tokenizer(["12 + 7 = 19 <think> 12 plus 7 </think> <answer> 19 </answer>"] * 20, 300)
    arch = ModelArch(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
    path = tmp_path_factory.mktemp("model")
    save_model(build_model(arch, tok, seed=3), tok, path)
    return str(path), tok


@pytest.mark.parametrize("loss_type", list(TRL_MODES))
def test_loss_and_gradients_match_trl(saved_tiny_model, tmp_path, loss_type):
    """TRL's loss is only reachable through GRPOTrainer._compute_loss: build a trainer on the tiny
    model (no training), hand it rollout tensors, and compare loss, parameter gradients and metrics
    with ours computed from token_logprobs on the same model."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from r1flow.grpo.logprobs import completion_mask, token_logprobs

    path, tok = saved_tiny_model
    beta, eps_low, eps_high, temperature, max_completion = 0.05, 0.2, 0.28, 0.7, 9
    args = GRPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, save_strategy="no",
                      per_device_train_batch_size=4, num_generations=4, max_completion_length=max_completion,
                      loss_type=loss_type, beta=beta, epsilon=eps_low, epsilon_high=eps_high,
                      temperature=temperature,
                      bf16=False,  # GRPOConfig defaults to bf16 autocast, even on CPU
                      use_bias_correction_kl=False)  # TRL 1.16 default: KL term times π_θ/π_old; ours is plain
    trainer = GRPOTrainer(model=path, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_dict({"prompt": ["1 + 2"] * 4}), processing_class=tok)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # what Trainer sets inside its training loop

    g = torch.Generator().manual_seed(0)
    n, prompt_len, length = 8, 5, 6
    prompt_ids = torch.randint(1, len(tok), (n, prompt_len), generator=g)
    completion_ids = torch.randint(1, len(tok), (n, length), generator=g)
    completion_ids[1, 2] = completion_ids[4, 0] = completion_ids[6, 5] = tok.eos_token_id
    mask = completion_mask(completion_ids, tok.eos_token_id)  # [8, 6]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([torch.ones_like(prompt_ids), mask], dim=1)
    with torch.no_grad():
        logp0 = token_logprobs(trainer.model, input_ids, attention, prompt_len, temperature=temperature)
    old = logp0 + 0.3 * torch.randn(n, length, generator=g)
    ref = logp0 + 0.3 * torch.randn(n, length, generator=g)
    adv = group_advantages(torch.tensor([1.0, 0, 0, 1, 0.5, 0, 1, 0]), 4)

    inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids),
              "completion_ids": completion_ids, "completion_mask": mask, "advantages": adv,
              "old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()}
    trainer.model.zero_grad()
    trl_loss = trainer._compute_loss(trainer.model, inputs)
    trl_loss.backward()
    trl_grads = [p.grad.clone() for p in trainer.model.parameters()]

    trainer.model.zero_grad()
    logp = token_logprobs(trainer.model, input_ids, attention, prompt_len, temperature=temperature)
    loss, stats = grpo_loss(logp, old, ref, adv, mask, beta=beta, eps_low=eps_low, eps_high=eps_high,
                            mode=TRL_MODES[loss_type], total_tokens=mask.sum().item(), num_sequences=n,
                            max_len=max_completion)
    loss.backward()
    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-7)
    for ours, theirs in zip((p.grad for p in trainer.model.parameters()), trl_grads):
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-7)
    metrics = trainer._metrics["train"]
    assert stats["kl_k3"].item() == pytest.approx(metrics["kl"][-1], rel=1e-5)
    assert stats["clip_fraction/low"].item() == pytest.approx(metrics["clip_ratio/low_mean"][-1])
    assert stats["clip_fraction/high"].item() == pytest.approx(metrics["clip_ratio/high_mean"][-1])
    assert stats["clip_fraction/low"] > 0 and stats["clip_fraction/high"] > 0


# ---------------------------------------------------------------- padding

PAD_VALUES = [1e4, -1e4, float("-inf"), float("inf"), float("nan")]


def _poison(x, mask, value):
    """``x`` with every padded position (mask 0) set to ``value``."""
    return torch.where(mask.bool(), x, torch.full_like(x, value))


@pytest.mark.parametrize("pad_logp, pad_old, pad_ref", [
    (-1e4, 0.0, 0.0), (1e4, 0.0, 0.0), (float("-inf"), 1e4, -1e4), (0.0, float("-inf"), 1e4)])
def test_padding_hand_values_finite_with_extreme_logprobs(pad_logp, pad_old, pad_ref):
    # Row 0: 2 real tokens, ratio 1, A = +1, π_ref/π_θ = 2 → k3 = 2 − ln 2 − 1 = 0.306853.
    # Row 1: 1 real token, then padding; ratio 1, A = −1, ref = logp → k3 = 0.
    # Per token: row 0: −1 + 0.1·(1 − ln 2) each; row 1: +1. token_mean over 3 tokens:
    # loss = (2·(−1 + 0.1·(1 − ln 2)) + 1) / 3 = (−1 + 0.2·(1 − ln 2)) / 3 = −0.312876.
    # d/dlogp: row 0: −A·ratio + β·(1 − π_ref/π_θ) = −1 − 0.1 = −1.1 → −1.1/3; row 1: +1/3; padding 0.
    ln2 = math.log(2.0)
    mask = torch.tensor([[1, 1], [1, 0]])
    logp = torch.tensor([[-1.0, -2.0], [-0.5, pad_logp]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.0, -2.0], [-0.5, pad_old]], dtype=torch.float64)
    ref = torch.tensor([[-1.0 + ln2, -2.0 + ln2], [-0.5, pad_ref]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, stats = grpo_loss(logp, old, ref, adv, mask, beta=0.1, eps_low=0.2, eps_high=0.2, mode="token_mean")
    loss.backward()
    assert loss.item() == pytest.approx((-1 + 0.2 * (1 - ln2)) / 3, rel=1e-12)
    want = torch.tensor([[-1.1 / 3, -1.1 / 3], [1 / 3, 0.0]], dtype=torch.float64)
    assert torch.allclose(logp.grad, want, rtol=1e-12, atol=0)
    # statistics are float32 means over the 3 real tokens
    assert stats["kl_k3"].item() == pytest.approx(2 * (1 - ln2) / 3, rel=1e-6)  # (0.306853·2 + 0) / 3
    assert stats["kl_k1"].item() == pytest.approx(-2 * ln2 / 3, rel=1e-6)  # log π_θ − log π_ref: −ln 2, 0
    assert stats["ratio"].item() == 1.0 and all(torch.isfinite(v) for v in stats.values())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pad", PAD_VALUES)
def test_padded_batch_equals_its_unpadded_rows_alone(mode, pad):
    """A padded batch whose padding holds ±1e4, ±inf or NaN (old and reference: the opposite sign, so
    exp(ref − logp) and exp(logp − old) overflow there) gives the loss
    and gradients of its rows computed one by one, trimmed to their real tokens (same denominators)."""
    logp, old, ref, adv, mask = _random_batch(seed=5, n=6, length=7)
    mask[2] = 0  # a row with no real token at all
    counts = dict(total_tokens=mask.sum().item(), num_sequences=6, max_len=7)
    kwargs = dict(beta=0.04, eps_low=0.2, eps_high=0.28, mode=mode, **counts)
    leaf = _poison(logp, mask, pad).requires_grad_()
    loss, stats = grpo_loss(leaf, _poison(old, mask, -pad), _poison(ref, mask, -pad), adv, mask, **kwargs)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(leaf.grad).all()
    assert all(torch.isfinite(v) for v in stats.values())
    assert (leaf.grad[~mask.bool()] == 0).all()

    alone = logp.clone().requires_grad_()
    total = 0.0
    for i, n in enumerate(mask.sum(dim=1).tolist()):
        if n == 0:
            continue
        part, cut = slice(i, i + 1), slice(0, n)
        row_loss, _ = grpo_loss(alone[part, cut], old[part, cut], ref[part, cut], adv[part],
                                mask[part, cut], **kwargs)
        row_loss.backward()
        total += row_loss.item()
    assert loss.item() == pytest.approx(total, rel=1e-12, abs=1e-15)
    assert torch.allclose(leaf.grad, alone.grad.where(mask.bool(), 0.0), rtol=1e-12, atol=1e-15)
    clean, clean_stats = grpo_loss(logp, old, ref, adv, mask, **kwargs)  # finite padding: same numbers
    assert clean.item() == pytest.approx(loss.item(), rel=1e-12, abs=1e-15)
    for key, value in clean_stats.items():
        assert value.item() == pytest.approx(stats[key].item(), rel=1e-12, abs=1e-15), key
