"""Per-token log-probabilities of sampled completions, and which completion tokens count.

GRPO's ratios and KL (paper section 2.2.1; DeepSeekMath eq. 3) need log π(o_t | q, o_<t) for every
completion token, under the policy, the old policy and the reference model alike. Three details
decide whether those numbers are right:

- Logits are divided by the sampling temperature, so the log-probs are those of the distribution
  the rollout engine actually sampled from (otherwise ratios are off from the first step).
- Prompts are left-padded to one length so completions start at one index; position ids are
  taken from the attention mask (cumsum − 1), as ``generate`` does, so a padded row scores like
  the same row without padding. (Under RoPE a constant offset cancels in attention, so for Qwen2
  this changes only rounding; for absolute-position models it is the difference between right
  and wrong.)
- Only completion positions are projected to the vocabulary and normalized (``logits_to_keep``
  plus a gather minus logsumexp), so memory grows with completion length, not prompt length.

GRPO's G completions of a question share its prompt. ``shared_prompt_logprobs`` runs each
distinct prompt once, repeats its key/value cache over its rows (autograd carries the gradients
of all G rows back through the repeat) and runs only the completions per row: the same numbers
and gradients as ``token_logprobs`` on the full rows, for (distinct prompts × P + rows × L)
tokens of work instead of rows × (P + L) — with a long template prompt, several times less.
"""

from __future__ import annotations

import torch
from torch import Tensor


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """0, 1, 2, … counted over real tokens only; padding gets 0."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)  # [N, T]


def token_logprobs(model, input_ids: Tensor, attention_mask: Tensor, completion_start: int, *,
                   temperature: float = 1.0) -> Tensor:
    """log π(token) at temperature for every position from ``completion_start`` on: [N, T − completion_start].

    ``input_ids`` [N, T] is left-padded prompts followed by completions; ``model`` is a causal LM whose
    forward accepts ``position_ids`` and ``logits_to_keep`` (every transformers decoder does).
    Values at completion positions after EOS or at padding are computed but meaningless: mask them.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    length = input_ids.size(1) - completion_start
    if completion_start < 1 or length < 1:
        raise ValueError(f"completion_start={completion_start} must be in [1, {input_ids.size(1) - 1}]")
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=length + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1, :].float() / temperature  # [N, L, V]: position t predicts token t+1
    targets = input_ids[:, completion_start:]  # [N, L]
    picked = logits.gather(dim=-1, index=targets.unsqueeze(-1)).squeeze(-1)  # [N, L]
    return picked - torch.logsumexp(logits, dim=-1)  # [N, L]


def shared_prompt_logprobs(model, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                           completion_attention: Tensor, *, temperature: float = 1.0) -> Tensor:
    """``token_logprobs`` of ``completion_ids`` [N, L] after left-padded prompts [N, P], each
    distinct prompt row run once: [N, L].

    ``completion_attention`` [N, L] is the completions' attention mask (the EOS mask). Rows with
    identical ``prompt_ids`` and ``prompt_mask`` share one prompt forward pass.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    keyed = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)  # [N, 2P]: identical rows share
    unique, inverse = torch.unique(keyed, dim=0, return_inverse=True)  # [U, 2P], [N]
    width = prompt_ids.size(1)
    u_ids, u_mask = unique[:, :width], unique[:, width:]
    head = model(input_ids=u_ids, attention_mask=u_mask, position_ids=position_ids_from_mask(u_mask),
                 use_cache=True, logits_to_keep=1)
    cache = head.past_key_values
    cache.batch_select_indices(inverse)  # [U, ...] -> [N, ...], differentiable indexing
    mask = torch.cat([prompt_mask, completion_attention], dim=1)  # [N, P + L]
    positions = position_ids_from_mask(mask)[:, width:]  # [N, L]
    tail = model(input_ids=completion_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                 use_cache=True, logits_to_keep=completion_ids.size(1))
    # the prompt's last position predicts the first completion token; completion t predicts t+1
    logits = torch.cat([head.logits[inverse, -1:], tail.logits[:, :-1]], dim=1).float() / temperature  # [N, L, V]
    picked = logits.gather(dim=-1, index=completion_ids.unsqueeze(-1)).squeeze(-1)  # [N, L]
    return picked - torch.logsumexp(logits, dim=-1)  # [N, L]


def completion_mask(completion_ids: Tensor, eos_id: int, *, pad_id: int | None = None) -> Tensor:
    """1 for tokens up to and including the first EOS, 0 after it and at ``pad_id``: [N, L] long.

    A completion cut at the length limit (no EOS) counts in full. When ``pad_id`` equals ``eos_id``
    the first EOS still counts (the model chose to stop there).
    """
    is_eos = (completion_ids == eos_id).long()  # [N, L]
    eos_before = is_eos.cumsum(dim=-1) - is_eos  # [N, L]: EOS tokens strictly before each position
    mask = eos_before == 0
    if pad_id is not None and pad_id != eos_id:
        mask &= completion_ids != pad_id
    return mask.long()
