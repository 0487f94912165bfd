"""The ranks of a multi-process stage (``accelerate launch``, DDP): which one this process is, and
sums over all of them — both trivial in a single process, so trainers call them unconditionally."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def rank_world() -> tuple[int, int]:
    """(this process's rank, number of ranks); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_ranks_sum(tensors: list[Tensor]) -> None:
    """Sum each tensor in place over all ranks; nothing to do in a single process.

    Used for loss denominators and for gradients: each rank's loss is its share of the global
    loss, so summed gradients are the global gradient.
    """
    if dist.is_available() and dist.is_initialized():
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def from_rank_zero(obj):
    """Rank 0's ``obj`` on every rank (work done once, e.g. curated data, shared before training)."""
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj
