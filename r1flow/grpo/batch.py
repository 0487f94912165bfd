"""A GRPO step's rollout batch as the loss needs it (arXiv 2501.12948 eq. 1-3: the group's
completions, their advantages, old and reference log-probs), and the no-grad log-probs of a whole
batch, micro-batch by micro-batch — padded with zero-weight passes on a short rank of a sharded
policy, since every forward of a sharded model is a collective (``r1flow.sharding``)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from r1flow.engine import Rollouts
from r1flow.grpo.logprobs import shared_prompt_logprobs, token_logprobs
from r1flow.grpo.loss import group_advantages, zero_variance_groups
from r1flow.grpo.params import GRPOParams
from r1flow.sharding import is_sharded, micro_batches
from r1flow.train.memory import is_checkpointing


@dataclass
class RolloutBatch:
    """One rollout batch as the loss needs it; every tensor on the policy's device."""

    prompt_ids: Tensor  # [N, P] left-padded
    prompt_mask: Tensor  # [N, P]
    completion_ids: Tensor  # [N, L] right-padded
    completion_mask: Tensor  # [N, L] 1 through the first EOS
    advantages: Tensor  # [N]
    old_logp: Tensor | None = None  # [N, L]; None: on-policy, the current log-probs detached
    ref_logp: Tensor | None = None  # [N, L]; None when β = 0

    @classmethod
    def from_rollouts(cls, rollouts: Rollouts, advantages: Tensor, device: torch.device) -> RolloutBatch:
        return cls(rollouts.prompt_ids.to(device), rollouts.prompt_mask.to(device),
                   rollouts.completion_ids.to(device), rollouts.completion_mask.to(device),
                   advantages.to(device))

    def __len__(self) -> int:
        return self.advantages.numel()

    def select(self, rows: Tensor) -> RolloutBatch:
        """The batch restricted to ``rows``."""
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        return RolloutBatch(**{name: None if t is None else t[rows] for name, t in picked.items()})

    def logprobs(self, model, rows: Tensor, temperature: float) -> Tensor:
        """Per-token log-probs [n, L'] of ``rows`` under ``model``: padding columns trimmed, each
        distinct prompt run once for all its rows (``shared_prompt_logprobs``) — or, while
        checkpointed layers drop the KV cache that sharing needs, every row whole (``token_logprobs``)."""
        prompt_mask = self.prompt_mask[rows]  # [n, P]
        completion_mask = self.completion_mask[rows]  # [n, L]
        start = self.prompt_mask.size(1) - int(prompt_mask.sum(dim=1).max())
        length = int(completion_mask.sum(dim=1).max())
        prompt_ids, prompt_mask = self.prompt_ids[rows, start:], prompt_mask[:, start:]
        completion_ids, completion_mask = self.completion_ids[rows, :length], completion_mask[:, :length]
        if is_checkpointing(model):
            ids, mask = torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1)
            return token_logprobs(model, ids, mask, prompt_ids.size(1), temperature=temperature)
        return shared_prompt_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                      temperature=temperature)


def rollout_batch(rollouts: Rollouts, rewards: Tensor, params: GRPOParams, device: torch.device) -> RolloutBatch:
    """Rows and group advantages of one step; with ``filter_zero_variance`` the rows of groups whose
    rewards are all equal are dropped (their advantages are exactly 0 anyway, but they count in the
    loss denominators)."""
    group = params.group_size
    batch = RolloutBatch.from_rollouts(rollouts, group_advantages(rewards, group, scale=params.adv_scale), device)
    if not params.filter_zero_variance:
        return batch
    keep = (~zero_variance_groups(rewards, group)).repeat_interleave(group)  # [N]
    return batch.select(keep.nonzero().squeeze(1).to(device))


def batch_logprobs(model, batch: RolloutBatch, micro_batch_size: int, temperature: float) -> Tensor:
    """Per-token log-probs [N, L] of every row under ``model``, no grad (0 past each row's length)."""
    out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32, device=batch.advantages.device)
    # no_grad, not inference_mode, for a sharded model: its parameters must not become inference tensors
    for rows in micro_batches(torch.arange(len(batch), device=out.device), micro_batch_size, model):
        with torch.no_grad() if is_sharded(model) else torch.inference_mode():
            if rows is None:  # sharded: this rank has fewer rows; keep the collectives in step
                padding_pass(model, out.device, temperature)
                continue
            logp = batch.logprobs(model, rows, temperature)  # [n, L']
        out[rows, : logp.size(1)] = logp
    return out


def padding_pass(model, device: torch.device, temperature: float) -> Tensor:
    """A sharded rank's pass over one row of one token (its loss weight is 0): it has fewer rows than
    another rank, and every forward and backward of a sharded model is a collective."""
    one = torch.ones((1, 1), dtype=torch.long, device=device)
    return RolloutBatch(one, one, one, one, torch.zeros(1, device=device)).logprobs(
        model, torch.zeros(1, dtype=torch.long, device=device), temperature)
