"""Grouped-query attention without copying the key/value heads (a speed fix, same numbers).

transformers' ``sdpa`` attention passes ``enable_gqa`` to ``scaled_dot_product_attention`` only
when there is no attention mask; with one — every left-padded GRPO batch, every decode step —
it first repeats each key/value head ``num_heads / num_kv_heads`` times (``repeat_kv``), a full
copy of the KV cache per layer per token. On CPU that copy was half of a decode step's time at
8M parameters. torch's kernels take a mask together with ``enable_gqa``, so ``sdpa_gqa`` is the
same attention with the copy left out. ``use_native_gqa(model)`` switches a model to it when
the model is on ``sdpa`` and has grouped KV heads; any other model is left as it is.

On CUDA the trade is the other way round: with a mask, ``enable_gqa`` leaves only the math kernel
(fp32 scores of every head kept for backward: tens of GB at 2k tokens), while the
memory-efficient kernel takes a mask once the KV heads are expanded. So on CUDA a masked call
expands them (``expand_kv``); the GPU check runs with the math kernel excluded, so a fallback
fails loudly. CPU keeps the copy-free path, which ``make bench`` measured faster there.
"""

from __future__ import annotations

import torch

NAME = "sdpa_gqa"


def sdpa_gqa_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, H, T, D], key/value [B, KV, S, D] → ([B, T, H, D], None), as transformers' sdpa."""
    q_length = query.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(q_length > 1 and attention_mask is None and causal)
    if causal and key.shape[2] > q_length:  # prefill into an empty static cache: drop the unused slots
        key, value = key[:, :, :q_length], value[:, :, :q_length]
    grouped = query.shape[1] != key.shape[1]
    if grouped and expand_kv(query, attention_mask):
        key, value = (t.repeat_interleave(query.shape[1] // key.shape[1], dim=1) for t in (key, value))
        grouped = False
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=causal,
        enable_gqa=grouped)
    return out.transpose(1, 2).contiguous(), None


def expand_kv(query: torch.Tensor, attention_mask: torch.Tensor | None) -> bool:
    """Whether to expand grouped KV heads before SDPA: on CUDA with a mask over several query
    positions (module doc). A decode step (one position) keeps the grouped call: its scores are
    small, and expanding would copy the whole KV cache every token."""
    return attention_mask is not None and query.is_cuda and query.shape[-2] > 1


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, sdpa_gqa_forward)
        AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks sdpa gets


def use_native_gqa(model) -> bool:
    """Switch ``model`` from ``sdpa`` to ``sdpa_gqa`` when its KV heads are grouped; True if switched."""
    config = model.config
    heads, kv_heads = getattr(config, "num_attention_heads", 0), getattr(config, "num_key_value_heads", 0)
    if config._attn_implementation != "sdpa" or not kv_heads or heads == kv_heads:
        return config._attn_implementation == NAME
    _register()
    model.set_attn_implementation(NAME)
    return True
