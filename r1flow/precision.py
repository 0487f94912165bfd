"""Mixed precision scoped to each forward pass, and frozen copies in bf16.

``dtype: bfloat16`` keeps fp32 master weights, gradients and AdamW state (what a small
learning rate such as the paper's 3e-6 needs) and runs every forward of a trained model in its
own ``torch.autocast(bfloat16)`` context: matmuls in bf16, while autocast's rules keep softmax,
log-softmax and losses in fp32, and r1flow's log-probs upcast the logits themselves
(``r1flow.grpo.logprobs``). Backward runs outside autocast, as PyTorch recommends.

Why one context per forward, never one around a training loop: autocast caches the bf16 copy
of each weight until the outermost autocast context exits. Inside a context that spans
optimizer steps every later matmul reads the step-0 copies — the model trains on stale weights
(only embeddings and norms, which autocast leaves in fp32, move: a bf16 R1-Zero stage logged a GRPO
ratio of exactly 1, and the micro base's pretraining loss went 5.64 → 5.47 where fp32 reached
1.69). A pre-hook that
enters autocast and a hook that leaves it (``always_call``, so an exception cannot leave it
entered) drop the cache as each forward returns. Every caller — trainers, log-probs, decoding,
``generate`` — goes through ``model(...)`` and so gets it without knowing.

Frozen models (GRPO's reference, a reward model) never step: they are cast to bf16 whole, with
no gradients (``freeze``), half the memory of an fp32 copy — what verl and OpenRLHF do.
"""

from __future__ import annotations

from typing import Any

import torch

_HOOKED = "_r1flow_autocast"


def compute_dtype(runtime: dict[str, Any]) -> torch.dtype | None:
    """bf16 when the stage runs in mixed precision, else None (plain fp32).

    >>> compute_dtype({"dtype": "bfloat16"}), compute_dtype({})
    (torch.bfloat16, None)
    """
    name = runtime.get("dtype", "float32")
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"dtype: expected 'float32' or 'bfloat16', got {name!r}")
    return torch.bfloat16 if name == "bfloat16" else None


def autocast_forwards(model, dtype: torch.dtype | None):
    """Run each forward of ``model`` in its own autocast context of ``dtype`` (None: leave the
    model alone); idempotent. Returns ``model``."""
    if dtype is None or getattr(model, _HOOKED, None) is not None:
        return model

    def enter(module, args):  # a stack per module: a module may run inside itself (nested forwards)
        device = next(module.parameters()).device.type
        context = torch.autocast(device, dtype=dtype)
        context.__enter__()
        getattr(module, _HOOKED).append(context)

    def leave(module, args, output):
        getattr(module, _HOOKED).pop().__exit__(None, None, None)

    parts = [model]  # log-probs call the decoder and the head apart (r1flow.grpo.logprobs)
    if hasattr(model, "get_decoder") and hasattr(model, "get_output_embeddings"):
        parts += [m for m in (model.get_decoder(), model.get_output_embeddings()) if m is not None and m is not model]
    for part in parts:
        setattr(part, _HOOKED, [])
        part.register_forward_pre_hook(enter)
        part.register_forward_hook(leave, always_call=True)
    return model


def freeze(model, dtype: torch.dtype | None):
    """A model that is never trained: eval mode, no gradients, and cast whole to ``dtype`` when the
    stage runs in mixed precision. Returns ``model``."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        if dtype is not None:  # parameters only: buffers such as RoPE's inv_freq stay fp32, or every
            p.data = p.data.to(dtype)  # position's angle drifts (by ~2 rad at 2k tokens for head_dim 128)
    return model
