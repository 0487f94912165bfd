"""Fully sharded training (``launch.strategy: fsdp``): parameters, gradients and AdamW state split
over the ranks with PyTorch's FSDP2 (``fully_shard``, one unit per decoder layer plus the root) —
the partitioning DeepSpeed ZeRO-3 does — for models whose training state does not fit one GPU
(7B full fine-tuning: 16 bytes per parameter, 113 GB, before activations).

Two rules follow from r1flow's distributed math (``r1flow.ranks``):

- each rank's loss is its share of the global mean, so gradients must be *summed* over ranks,
  while FSDP's reduce-scatter averages them: a sharded rank back-propagates its share times the
  world size (``backward_share``; a divide factor of 1 would need PREMUL_SUM, which gloo lacks);
- every forward and backward of a sharded model is a collective, so all ranks run the same number
  of them (the SFT trainer pads a rank short of a micro-batch with a zero-weight one).

Saving, checkpoints and evaluation see whole tensors: ``full_state`` gathers them (a collective;
rank 0 receives them on the CPU), ``load_full_state`` shards them back, ``unsharded`` rebuilds a
plain model on rank 0 for saving and evaluation. GRPO samples from a whole copy of the policy on
every rank (``WholeCopyEngine``: generation runs a different number of forwards per rank, which a
sharded model cannot), refreshed from the shards after every step, as a vLLM engine is.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


def wants_sharding(launch) -> bool:
    """Does a stage's ``launch`` ask for sharded training (``strategy: fsdp`` on several ranks)?"""
    from r1flow.ranks import rank_world

    return launch.strategy == "fsdp" and rank_world()[1] > 1


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard(model):
    """Shard ``model`` in place over the process group (its decoder layers, then the rest), after
    checking that every rank loaded the same weights (each rank keeps only its own slice)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    low, high = checksum.clone(), checksum.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        raise RuntimeError(f"the ranks loaded different weights (checksums {low.item()} to {high.item()}): "
                           "is FSDP_CPU_RAM_EFFICIENT_LOADING set? (configs/accelerate/fsdp.yaml)")
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def backward_share(loss, model, world: int) -> None:
    """Back-propagate a rank's share of the global loss so that the gradients end up summed over
    ranks: as is for plain models (summed by hand), times ``world`` for sharded ones (averaged)."""
    (loss * world if is_sharded(model) else loss).backward()


def sum_gradients(model, params) -> None:
    """The gradients of ``params`` summed over ranks after a step's backward passes: by hand for a
    plain model (a missing gradient counts as zeros, so every rank reduces the same list); nothing
    to do for a sharded one, whose backward passes reduce-scattered them."""
    from r1flow.ranks import all_ranks_sum

    if is_sharded(model):
        return
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_ranks_sum([p.grad for p in params])


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(model, optimizer=None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Whole model (and optimizer) state dicts, keyed by parameter name, on rank 0's CPU (empty on
    the other ranks). Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    model_state = get_model_state_dict(model, options=_options())
    optim_state = get_optimizer_state_dict(model, optimizer, options=_options()) if optimizer is not None else None
    return model_state, optim_state


def load_full_state(model, model_state: dict[str, Any], optimizer=None,
                    optim_state: dict[str, Any] | None = None) -> None:
    """Shard whole state dicts (as ``full_state`` gives them; every rank passes them) into a
    sharded model and its optimizer."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    if optimizer is not None and optim_state is not None:
        set_optimizer_state_dict(model, optimizer, optim_state, options=options)


def unsharded(model):
    """The trained weights as a plain model on rank 0, on the sharded model's device (None on the
    other ranks). Every rank must call it."""
    from transformers import AutoModelForCausalLM

    from r1flow.ranks import rank_world

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights

    state, _ = full_state(model)
    if rank_world()[0] != 0:
        return None
    device = next(model.parameters()).device
    with no_init_weights():  # every weight is loaded next: no random init of billions of them
        plain = AutoModelForCausalLM.from_config(model.config)  # fp32, as the trainers keep their weights
    plain.load_state_dict(state)
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.to(device).eval()


def as_float(value) -> float:
    """A scalar that may be a DTensor (the grad norm of a sharded model)."""
    return float(value.full_tensor() if hasattr(value, "full_tensor") else value)


def micro_batches(rows: torch.Tensor, size: int, model) -> list[torch.Tensor | None]:
    """``rows`` in micro-batches of ``size``; for a sharded model padded with ``None`` up to the
    count of the rank that has the most (each ``None``: a dummy forward, and backward, that keeps
    the ranks' collectives in step)."""
    parts: list[torch.Tensor | None] = [part for part in rows.split(size) if len(part)]  # none when empty
    if not is_sharded(model):
        return parts
    import torch.distributed as dist

    most = torch.tensor([len(parts)], device=next(model.parameters()).device)  # NCCL reduces GPU tensors
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return parts + [None] * (int(most) - len(parts))


def gather_into(sharded, whole) -> None:
    """Copy a sharded model's weights into a plain model of the same architecture, one parameter at
    a time (an all-gather each: every rank calls it, and holds one whole parameter at a time)."""
    target = dict(whole.named_parameters())
    with torch.no_grad():
        for name, p in sharded.named_parameters():
            target[name].copy_(p.full_tensor() if hasattr(p, "full_tensor") else p)


class WholeCopyEngine:
    """A generation engine on a whole copy of a sharded policy: ``sync_weights(policy)`` gathers
    the shards into the copy, then lets the inner engine take the copy's weights (a vLLM engine
    is sent them in memory; the torch engines read the copy directly)."""

    def __init__(self, inner, whole) -> None:
        self.inner, self.whole = inner, whole

    def generate(self, *args, **kwargs):
        return self.inner.generate(*args, **kwargs)

    def sync_weights(self, policy) -> None:
        gather_into(policy, self.whole)
        self.inner.sync_weights(self.whole)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)
