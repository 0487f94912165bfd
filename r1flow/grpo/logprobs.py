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

The vocabulary is projected in chunks of positions (``chunked_logprobs``): the head runs on a
chunk's hidden states, its logits are upcast to fp32, normalized and gathered, and under autograd
each chunk is recomputed in backward instead of kept. No ``[rows, length, vocab]`` fp32 tensor
ever exists — at 8 rows × 2,048 tokens × Qwen2.5's 151,936 entries that tensor alone was 10 GB,
beside the bf16 logits and their gradient. A sharded policy (FSDP2) keeps the full-logits path:
its head's parameters are gathered only inside the root module's forward.

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


LOGIT_CHUNK_ELEMENTS = 1 << 26  # fp32 logits alive at once: 256 MB (e.g. 4 rows × 110 positions × 152k)


def chunked_logprobs(head, hidden: Tensor, targets: Tensor, temperature: float,
                     chunk_elements: int | None = None) -> Tensor:
    """log softmax(head(hidden) / T)[targets]: [N, L] from hidden states [N, L, H], the fp32 logits
    of at most ``chunk_elements`` (default ``LOGIT_CHUNK_ELEMENTS``) entries at a time, each chunk
    recomputed in backward."""
    from torch.utils.checkpoint import checkpoint

    vocab = head.weight.size(0)
    step = max(1, (chunk_elements or LOGIT_CHUNK_ELEMENTS) // max(1, hidden.size(0) * vocab))
    parts = []
    for h, t in zip(hidden.split(step, dim=1), targets.split(step, dim=1)):
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(_chunk_logprobs, head, h, t, temperature, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(head, h, t, temperature))
    return torch.cat(parts, dim=1)


def _chunk_logprobs(head, hidden: Tensor, targets: Tensor, temperature: float) -> Tensor:
    logits = head(hidden).float() / temperature  # [N, c, V]
    picked = logits.gather(dim=-1, index=targets.unsqueeze(-1)).squeeze(-1)  # [N, c]
    return picked - torch.logsumexp(logits, dim=-1)


SCALED_LOGITS = ("final_logit_softcapping", "logits_scaling", "logit_scale")  # Gemma2, Granite, Cohere


def _chunkable(model) -> bool:
    """A plain causal LM whose decoder and head r1flow can call apart (not a sharded one)."""
    from r1flow.sharding import is_sharded

    config = getattr(model, "config", None)
    scaled = any(getattr(config, k, None) not in (None, 1.0) for k in SCALED_LOGITS)  # the head alone is not the logits
    return (not scaled and not is_sharded(model) and hasattr(model, "get_decoder")
            and getattr(model.get_output_embeddings(), "weight", None) is not None)


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
    targets = input_ids[:, completion_start:]  # [N, L]
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    if _chunkable(model):
        hidden = model.get_decoder()(**inputs).last_hidden_state[:, completion_start - 1:-1]  # [N, L, H]
        return chunked_logprobs(model.get_output_embeddings(), hidden, targets, temperature)
    out = model(**inputs, logits_to_keep=length + 1)
    logits = out.logits[:, :-1, :].float() / temperature  # [N, L, V]: position t predicts token t+1
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
    tail_inputs = dict(input_ids=completion_ids, attention_mask=mask, position_ids=positions,
                       past_key_values=cache, use_cache=True)
    if _chunkable(model):  # the prompt's last position predicts the first completion token
        first = head.logits[inverse, -1].float() / temperature  # [N, V]
        first = first.gather(-1, completion_ids[:, :1]).squeeze(-1) - torch.logsumexp(first, dim=-1)  # [N]
        hidden = model.get_decoder()(**tail_inputs).last_hidden_state[:, :-1]  # [N, L - 1, H]
        rest = chunked_logprobs(model.get_output_embeddings(), hidden, completion_ids[:, 1:], temperature)
        return torch.cat([first[:, None], rest], dim=1)  # [N, L]
    tail = model(**tail_inputs, logits_to_keep=completion_ids.size(1))
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
