"""GRPO objective as small tensor functions: advantages, ratios, clipping, KL, aggregation.

What the R1 paper writes (arXiv 2501.12948 v1, section 2.2.1, eq. 1): for G outputs o_i sampled
from π_old for a question q, maximize (1/G) Σ_i [min(ρ_i A_i, clip(ρ_i, 1−ε, 1+ε) A_i) − β D_KL],
with ρ_i = π_θ(o_i|q) / π_old(o_i|q) a *sequence-level* ratio over whole outputs, and
D_KL = π_ref/π_θ − log(π_ref/π_θ) − 1 (eq. 2), A_i = (r_i − mean(r)) / std(r) (eq. 3).

What is implemented is GRPO's per-token form from DeepSeekMath (arXiv 2402.03300, eq. 3), which
every peer (TRL, verl, OpenRLHF, open-instruct) implements: ratio, clipping and KL are per token,
ρ_{i,t} = π_θ(o_{i,t}|q,o_{i,<t}) / π_old(...), and the per-token terms are averaged. The per-token
loss is kept apart from how it is averaged (``aggregate``); the modes and their peers:

- ``sequence_mean``: mean over each output's tokens, then over outputs — DeepSeekMath eq. 3 and
  the R1 paper's 1/G; TRL ``loss_type="grpo"``, verl ``seq-mean-token-mean``.
- ``token_mean``: sum over all tokens / number of tokens — DAPO (arXiv 2503.14476); TRL 1.16
  ``"dapo"`` (its default; tokens counted over the whole generation batch and all processes) and
  ``"bnpo"`` (tokens of the local micro-batch), verl ``token-mean``.
- ``fixed_length``: sum / (number of outputs × max completion length) — Dr. GRPO (arXiv
  2503.20783); TRL ``"dr_grpo"``, verl ``seq-mean-token-sum-norm``.

Denominators are arguments, so a trainer passes counts for the whole rollout batch (all
micro-batches, all ranks); each micro-batch's loss is then its share of the global loss, and the
summed micro-batch gradients equal the full-batch gradient exactly (TRL's ``grpo``/``bnpo`` divide
per micro-batch instead, which equals this only when micro-batches are alike).

Advantages: A_i = (r_i − mean_group(r)) / (std + ε) with the *unbiased* std (Bessel's correction,
``torch.std``'s default and TRL's ``nanstd``) and ε = 1e-4 added to the std, as TRL does.
``scale="batch"`` keeps the group mean but divides by the std of the whole batch (TRL's
``scale_rewards="batch"``); ``scale="none"`` is Dr. GRPO (no std division). A group whose rewards
are all equal gets advantages of exactly 0 (the mean of equal floats can differ from them by an
ulp), so it contributes exactly no policy gradient.

KL: ``k3_kl`` is the paper's D_KL per token (Schulman's k3 estimator, unbiased for KL(π_θ‖π_ref)
under samples from π_θ). Its gradient, used as a loss, is not the reverse KL's gradient. With
r = π_ref/π_θ at the sampled token, ∇k3 = ∇r − ∇log r = (1 − r) ∇log π_θ, and under y ~ π_θ
(per position, given the prefix) E[(1 − r) ∇log π_θ] = −Σ_y π_ref(y) ∇log π_θ(y) = ∇KL(π_ref‖π_θ),
the *forward* KL's gradient; whereas ∇KL(π_θ‖π_ref) = E_{π_θ}[log(π_θ/π_ref) ∇log π_θ]. The two agree
to first order near π_θ = π_ref (1 − r ≈ log(π_θ/π_ref)). Weighting k3 by the ratio π_θ/π_old, as
TRL 1.16 does by default (``use_bias_correction_kl``), adds k3·∇log π_θ and gives the reverse KL's
gradient; here k3 is unweighted, as in DeepSeekMath and the R1 paper (TRL parity needs that flag off).
``k1_kl`` (log π_θ − log π_ref) is for logging only.

Padding: old-policy and reference log-probs are zero-filled past each completion, and the policy's
may be anything there (±1e4, −inf). exp(ref − logp) or exp(logp − old) then overflows to inf, and
multiplying by a 0 mask afterwards gives inf·0 = NaN in the loss and its gradient. So ``grpo_loss``
zeroes every log-prob input at padding first (``zero_padding``: ratio 1, KL 0 there), and the
masked sums select with ``torch.where`` instead of multiplying by the mask.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

AggregationMode = Literal["sequence_mean", "token_mean", "fixed_length"]
RewardScale = Literal["group", "batch", "none"]


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B*G], got shape {tuple(rewards.shape)}")
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"group_size={group_size} must be >= 2 and divide {rewards.numel()} rewards")
    return rewards.view(-1, group_size)  # [B, G]


def zero_variance_groups(rewards: Tensor, group_size: int) -> Tensor:
    """True for each group whose rewards are all equal (it carries no learning signal)."""
    grouped = _grouped(rewards, group_size)  # [B, G]
    return grouped.amax(dim=1) == grouped.amin(dim=1)  # [B]


def group_advantages(rewards: Tensor, group_size: int, *, scale: RewardScale = "group",
                     eps: float = 1e-4) -> Tensor:
    """A_i = (r_i − mean of its group) / (std + eps); rewards are ordered group by group."""
    grouped = _grouped(rewards, group_size)  # [B, G]
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # [B, G]
    if scale == "group":
        centered = centered / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centered = centered / (rewards.std() + eps)
    elif scale != "none":
        raise ValueError(f"unknown scale {scale!r}: expected 'group', 'batch' or 'none'")
    flat = zero_variance_groups(rewards, group_size).unsqueeze(1)  # [B, 1]
    return torch.where(flat, torch.zeros_like(centered), centered).reshape(-1)  # [B*G]


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token π_ref/π_θ − log(π_ref/π_θ) − 1 (paper eq. 2); >= 0, 0 where the two agree."""
    log_r = ref_logp - logp  # [N, L]
    return torch.exp(log_r) - log_r - 1


def k1_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token log π_θ − log π_ref (for logging)."""
    return logp - ref_logp  # [N, L]


def clip_regions(ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float) -> tuple[Tensor, Tensor]:
    """Tokens whose clipped branch is active (zero gradient): (below 1−ε_low with A<0, above 1+ε_high with A>0)."""
    adv = advantages.unsqueeze(1)  # [N, 1]
    low = (ratio < 1 - eps_low) & (adv < 0)  # [N, L]
    high = (ratio > 1 + eps_high) & (adv > 0)  # [N, L]
    return low, high


def clipped_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, eps_low: float,
                      eps_high: float) -> tuple[Tensor, Tensor]:
    """Per-token −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) and the mask of tokens where clipping bites."""
    ratio = torch.exp(logp - old_logp)  # [N, L]
    adv = advantages.unsqueeze(1)  # [N, 1]
    unclipped = ratio * adv  # [N, L]
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv  # [N, L]
    low, high = clip_regions(ratio, advantages, eps_low, eps_high)
    return -torch.min(unclipped, clipped), low | high


def aggregate(per_token: Tensor, mask: Tensor, mode: AggregationMode, *, total_tokens: float | None = None,
              num_sequences: int | None = None, max_len: int | None = None) -> Tensor:
    """Average masked per-token values [N, L] to a scalar with the given mode.

    ``total_tokens``, ``num_sequences`` and ``max_len`` are the denominators for the WHOLE rollout
    batch (all micro-batches and ranks); left as None they default to this tensor's own counts
    (its mask sum, N, L), which is right only when it is the whole batch.
    """
    mask = mask.to(per_token.dtype)  # [N, L]
    masked = zero_padding(per_token * mask, mask)  # [N, L]
    if mode == "sequence_mean":
        n = per_token.size(0) if num_sequences is None else num_sequences
        per_seq = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # [N]
        return per_seq.sum() / n
    if mode == "token_mean":
        tokens = mask.sum().clamp(min=1.0) if total_tokens is None else max(float(total_tokens), 1.0)
        return masked.sum() / tokens
    if mode == "fixed_length":
        n = per_token.size(0) if num_sequences is None else num_sequences
        length = per_token.size(1) if max_len is None else max_len
        return masked.sum() / (n * length)
    raise ValueError(f"unknown mode {mode!r}: expected 'sequence_mean', 'token_mean' or 'fixed_length'")


def zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with 0 wherever ``mask`` is 0 (no gradient flows there): a selection, not a product,
    so an inf or NaN at padding cannot turn into NaN."""
    return torch.where(mask.bool(), x, x.new_zeros(()))


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(torch.float32)
    return (zero_padding(x.float() * mask, mask).sum() / mask.sum().clamp(min=1.0)).detach()


def grpo_loss(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None, advantages: Tensor, mask: Tensor, *,
              beta: float, eps_low: float, eps_high: float, mode: AggregationMode,
              total_tokens: float | None = None, num_sequences: int | None = None,
              max_len: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO loss (to minimize) of one micro-batch and detached statistics over its masked tokens.

    Shapes: ``logp``, ``old_logp``, ``ref_logp``, ``mask`` [N, L]; ``advantages`` [N]. Values at
    padding (mask 0) are ignored, whatever they are (see the module docstring).
    Statistics are token-weighted means over this micro-batch (``num_tokens`` says how many tokens,
    so a caller can combine micro-batches): ``clip_fraction/low``, ``clip_fraction/high``, ``ratio``
    and, when ``ref_logp`` is given, ``kl_k3`` and ``kl_k1``.
    """
    if beta != 0.0 and ref_logp is None:
        raise ValueError("beta != 0 needs ref_logp")
    logp, old_logp = zero_padding(logp, mask), zero_padding(old_logp, mask)  # before any exp()
    ref_logp = None if ref_logp is None else zero_padding(ref_logp, mask)
    per_token, _ = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)  # [N, L]
    stats: dict[str, Tensor] = {}
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp)  # [N, L]
        if beta != 0.0:
            per_token = per_token + beta * kl
        stats["kl_k3"] = _masked_mean(kl, mask)
        stats["kl_k1"] = _masked_mean(k1_kl(logp, ref_logp), mask)
    loss = aggregate(per_token, mask, mode, total_tokens=total_tokens, num_sequences=num_sequences,
                     max_len=max_len)
    ratio = torch.exp(logp - old_logp).detach()  # [N, L]
    low, high = clip_regions(ratio, advantages, eps_low, eps_high)
    stats["clip_fraction/low"] = _masked_mean(low, mask)
    stats["clip_fraction/high"] = _masked_mean(high, mask)
    stats["ratio"] = _masked_mean(ratio, mask)
    stats["num_tokens"] = mask.detach().sum().float()
    return loss, stats
