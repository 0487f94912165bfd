"""What keeps a real model's training step inside one GPU, shared by the SFT and GRPO trainers.

- **Activation checkpointing per decoder layer** (``checkpoint_layers``): each layer's activations
  are recomputed in backward instead of kept, so a 2,560-token micro-batch of a 1.5B model holds
  one layer's activations at a time, not 28. It costs one more forward (≈ a third more compute).
  transformers drops the KV cache inside checkpointed layers while training, so log-probs and the
  SFT shared-prefix pass take their cache-free path when it is on (``is_checkpointing``).
- **Fused AdamW on CUDA** (``adamw``): one kernel for the whole update instead of a loop of small
  ones; the same arithmetic.
- **Cached blocks handed back** (``release_cached_memory``) between the rollout and training
  phases, where a colocated vLLM engine wakes into memory the trainer's allocator still holds.
"""

from __future__ import annotations

import torch


def checkpoint_layers(model) -> None:
    """Recompute each decoder layer's activations in backward (non-reentrant, as FSDP2 wants)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_checkpointing(model) -> bool:
    """True while checkpointed layers drop the KV cache: training mode with checkpointing on."""
    return bool(getattr(model, "is_gradient_checkpointing", False)) and model.training


def adamw(groups: list[dict], device: torch.device, **kwargs) -> torch.optim.AdamW:
    """AdamW over ``groups``, fused into one kernel on CUDA."""
    return torch.optim.AdamW(groups, fused=device.type == "cuda", **kwargs)


def release_cached_memory() -> None:
    """Give the CUDA allocator's unused cached blocks back to the driver (a no-op on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
