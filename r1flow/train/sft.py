"""A plain PyTorch trainer for causal LMs: pretraining, cold-start SFT, SFT and distillation.

The paper fine-tunes with supervised data three times (cold start §2.3.1, the two-epoch SFT of
§2.3.3, distillation §2.4) and, for the CPU presets, the "base" model is pretrained here too.
Following the design (distillation is the SFT code with another config), one loop serves all:

- Examples are ``{"prompt", "completion"}``; EOS is appended to the completion. Prompt and
  completion are tokenized apart and concatenated, exactly as generation sees them (the prompt
  alone, then sampled completion tokens). With ``completion_only_loss`` the prompt positions get
  label -100; an example with an empty prompt trains on its whole text (pretraining).
- The loss is the mean over every unmasked token of the batch (token-level averaging).
- Right padding, AdamW (weight decay on matrices only), linear warmup then cosine decay,
  gradient clipping. No HF Trainer: on a laptop CPU the loop is the whole cost, and it stays
  readable.
- The data order is a pure function of ``(seed, epoch)`` (``epoch_order``), and ``on_step``
  receives the loop state after every optimizer step: the seam for checkpoint and resume.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from r1flow.checkpoint import Checkpointer
from r1flow.engine import encode_prompts
from r1flow.flops import compute_params, sft_flops
from r1flow.ranks import all_ranks_sum, rank_world
from r1flow.sharding import as_float, backward_share, is_sharded, micro_batches, sum_gradients
from r1flow.tracking import NullTracker, Tracker
from r1flow.train.memory import adamw, checkpoint_layers, is_checkpointing

IGNORE = -100


class SFTParams(BaseModel):
    """Optimisation settings for one supervised run."""

    model_config = ConfigDict(extra="forbid")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    epochs: float = Field(1.0, gt=0, description="passes over the examples (ignored if max_steps > 0)")
    max_steps: int = Field(0, ge=0, description="optimizer steps; 0 means use epochs")
    batch_size: int = Field(16, gt=0, description="examples per optimizer step")
    micro_batch_size: int = Field(0, ge=0, description="examples per forward/backward, gradients accumulated "
                                  "to the same step (memory bound; 0: the whole batch at once)")
    max_len: int = Field(256, gt=1, description="tokens per example after truncation")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="share of steps with linear warmup")
    schedule: str = Field("cosine", pattern="^(cosine|constant)$", description="decay after warmup")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of lr")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay on weight matrices")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 disables clipping")
    seed: int = Field(0, description="seeds the data order and torch")
    log_every: int = Field(10, gt=0, description="steps between metric reports")
    completion_only_loss: bool = Field(True, description="mask prompt tokens out of the loss")
    gradient_checkpointing: bool = Field(False, description="recompute each decoder layer's activations in "
                                         "backward (r1flow.train.memory): far less memory, ~1/3 more compute")
    min_shared_prefix: int = Field(
        16, ge=0, description="run a prompt prefix this long or longer, common to several rows, "
        "once per batch (same loss, less compute; 0 turns it off)"
    )


@dataclass
class StepState:
    """What ``on_step`` sees after an optimizer step (everything a checkpoint needs)."""

    step: int
    total_steps: int
    epoch: int
    batch_in_epoch: int
    loss: float
    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a pure function of (n, seed, epoch)."""
    order = list(range(n))
    random.Random(f"sft-order-{seed}-{epoch}").shuffle(order)
    return order


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr before optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def encode(examples: list[dict], tokenizer, max_len: int, completion_only: bool) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels per example; prompt labels are -100 when ``completion_only``."""
    prompts = [e["prompt"] for e in examples]
    completions = tokenizer([e["completion"] for e in examples], add_special_tokens=False)["input_ids"]
    prompt_ids = encode_prompts(tokenizer, prompts) if any(prompts) else [[]] * len(examples)
    rows = []
    for p_ids, c_ids in zip(prompt_ids, completions):
        c_ids = c_ids + [tokenizer.eos_token_id]
        labels = [IGNORE] * len(p_ids) + c_ids if completion_only else p_ids + c_ids
        rows.append(((p_ids + c_ids)[:max_len], labels[:max_len]))
    return rows


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, attention_mask, labels (-100 on padding)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy summed over labelled positions, and their count.

    logits [B, L, V] predict labels shifted by one: position t scores token t+1.
    """
    shifted = labels[:, 1:]  # [B, L-1]
    logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()  # [B*(L-1), V]
    total = F.cross_entropy(logits, shifted.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return total, int((shifted != IGNORE).sum())


def plain_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``token_loss`` of a right-padded batch without its ``[B, L, V]`` logits: the head runs on
    chunks of positions (``r1flow.grpo.logprobs.chunked_logprobs``), the same sum to fp32 rounding."""
    from r1flow.grpo.logprobs import _chunkable, chunked_logprobs

    if not _chunkable(model):
        return token_loss(model(input_ids=ids, attention_mask=mask, use_cache=False).logits, labels)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    shifted = labels[:, 1:]  # [B, L-1]: position t scores token t+1
    valid = shifted != IGNORE
    logp = chunked_logprobs(model.get_output_embeddings(), hidden[:, :-1], shifted.clamp(min=0), 1.0)
    return -torch.where(valid, logp, 0.0).sum(), int(valid.sum())


def shared_prefix_rows(ids: torch.Tensor, lengths: torch.Tensor, min_prefix: int) -> tuple[list[int], int]:
    """The rows that share the most worthwhile common prefix, and its length (``[], 0`` if none).

    ids [B, L]; lengths [B]. A prefix is kept shorter than each of its rows so every row still
    has tokens of its own; the saving of a group is (rows - 1) * prefix length.
    """
    lcp = (ids[:, None, :] == ids[None, :, :]).long().cumprod(-1).sum(-1)  # [B, B]
    lcp = torch.minimum(lcp, torch.minimum(lengths[:, None], lengths[None, :]) - 1)
    best, best_saving = ([], 0), 0
    for c in range(ids.size(0)):
        rows = (lcp[c] >= min_prefix).nonzero().flatten().tolist()
        prefix = int(lcp[c, rows].min()) if rows else 0
        if (len(rows) - 1) * prefix > best_saving:
            best, best_saving = (rows, prefix), (len(rows) - 1) * prefix
    return best


def _shared_prefix_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, prefix: int):
    """Summed loss and token count of rows whose first ``prefix`` tokens agree, running it once.

    The prefix's key/value cache is computed for one row and repeated over the rows; gradients
    flow back through the repeat, so loss and gradients equal the plain forward's.
    """
    head = model(input_ids=ids[:1, :prefix], use_cache=True)
    cache = head.past_key_values
    cache.batch_repeat_interleave(ids.size(0))
    tail = model(input_ids=ids[:, prefix:], attention_mask=mask, past_key_values=cache, use_cache=True)
    head_logp = F.log_softmax(head.logits[0].float(), dim=-1)  # [P, V]; position t scores token t+1
    targets = labels[:, 1 : prefix + 1]  # [G, P]
    valid = targets != IGNORE
    picked = head_logp[torch.arange(prefix, device=ids.device)[None, :], targets.clamp(min=0)]  # [G, P]
    tail_total, tail_count = token_loss(tail.logits, labels[:, prefix:])
    return tail_total - (picked * valid).sum(), tail_count + int(valid.sum())


def batch_loss(model, batch: dict[str, torch.Tensor], min_shared_prefix: int = 0) -> tuple[torch.Tensor, int]:
    """Mean next-token loss of a collated batch and the number of tokens it averages.

    With ``min_shared_prefix`` > 0, rows sharing a prefix at least that long (a long prompt
    template) run it once; the other rows run plainly. The result is the same either way.
    """
    device = next(model.parameters()).device  # collated on the CPU; the model may be on a GPU
    ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    lengths = mask.sum(1)
    rows, prefix = shared_prefix_rows(ids, lengths, min_shared_prefix) if min_shared_prefix else ([], 0)
    others = [i for i in range(ids.size(0)) if i not in set(rows)]
    total, count = torch.zeros((), device=device), 0
    for group, shared in ((rows, prefix), (others, 0)):
        if not group:
            continue
        width = int(lengths[group].max())
        g_ids, g_mask, g_labels = ids[group, :width], mask[group, :width], labels[group, :width]
        if shared:
            part, n = _shared_prefix_loss(model, g_ids, g_mask, g_labels, shared)
        else:
            part, n = plain_loss(model, g_ids, g_mask, g_labels)
        total, count = total + part, count + n
    return total / max(count, 1), count


def accumulate(model, rows: list[tuple[list[int], list[int]]], pad_id: int, params: SFTParams) -> tuple[float, int]:
    """Forward/backward one optimizer step's rows in micro-batches; each micro-batch's summed loss is
    divided by the whole step's label count, so the gradient equals the full batch's. Under DDP
    (several ranks) each rank takes every world-th row and the gradients are summed over ranks:
    the same gradient again. Returns the step's mean loss and its tokens (attention mask)."""
    rank, world = rank_world()
    sharded = is_sharded(model)
    labelled = max(sum(sum(label != IGNORE for label in labels[1:]) for _, labels in rows), 1)
    mine = rows[rank::world]
    size = params.micro_batch_size or max(-(-len(rows) // world), 1)  # default: a rank's rows in one go
    value = 0.0
    for picked in micro_batches(torch.arange(len(mine)), size, model):  # sharded: as many as the fullest rank
        part, weight = ([mine[i] for i in picked], 1.0) if picked is not None else (rows[:1], 0.0)
        shared = 0 if sharded or is_checkpointing(model) else params.min_shared_prefix  # both drop the KV cache
        loss, count = batch_loss(model, collate(part, pad_id), shared)
        share = loss * (weight * count / labelled)
        backward_share(share, model, world)  # sharded: the gradients are reduce-scattered here
        value += share.item()
    if world > 1:
        sum_gradients(model, model.parameters())
        total = torch.tensor([value], device=next(model.parameters()).device)
        all_ranks_sum([total])
        value = float(total.item())
    return float(value), sum(len(ids) for ids, _ in rows)


def total_steps(n_examples: int, params: SFTParams) -> int:
    if params.max_steps:
        return params.max_steps
    return max(1, math.ceil(params.epochs * math.ceil(n_examples / params.batch_size)))


def make_optimizer(model, params: SFTParams) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": params.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return adamw(groups, next(model.parameters()).device, lr=params.lr, betas=params.betas)


def train_sft(
    model,
    tokenizer,
    examples: list[dict],
    params: SFTParams,
    tracker: Tracker | None = None,
    on_step: Callable[[StepState], None] | None = None,
    checkpoints: Checkpointer | None = None,
) -> dict[str, float]:
    """Train ``model`` in place on ``examples``; returns final metrics (loss of the last window,
    mean loss of the run, steps, tokens, runtime). With ``checkpoints`` it first continues from
    the newest complete checkpoint, if any, and saves one every ``checkpoints.every`` steps (the
    data position is the step: the order is a pure function of seed and epoch)."""
    if not examples:
        raise ValueError("train_sft needs at least one example")
    tracker = tracker or NullTracker()
    torch.manual_seed(params.seed)
    encoded = encode(examples, tokenizer, params.max_len, params.completion_only_loss)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    steps = total_steps(len(encoded), params)
    warmup = int(params.warmup_ratio * steps)
    if params.gradient_checkpointing:
        checkpoint_layers(model)
    optimizer = make_optimizer(model, params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps, warmup, params.schedule, params.min_lr_ratio)
    )
    per_epoch = math.ceil(len(encoded) / params.batch_size)
    model.train()
    start = window_start = time.perf_counter()
    window_losses, window_tokens, all_losses, tokens_seen, first = [], 0, [], 0, 0
    n_compute = compute_params(model)
    final_window = float("nan")
    restored = checkpoints.restore(model=model, optimizer=optimizer, scheduler=scheduler) if checkpoints else None
    if restored is not None:
        first = restored.step
        window_losses, window_tokens = restored.extra["window_losses"], restored.extra["window_tokens"]
        all_losses, tokens_seen = restored.extra["all_losses"], restored.extra["tokens_seen"]
        final_window = restored.extra["final_window"]
    for step in range(first, steps):
        epoch, batch_in_epoch = divmod(step, per_epoch)
        if batch_in_epoch == 0 or step == first:
            order = epoch_order(len(encoded), params.seed, epoch)
        picked = order[batch_in_epoch * params.batch_size : (batch_in_epoch + 1) * params.batch_size]
        optimizer.zero_grad(set_to_none=True)
        value, seen = accumulate(model, [encoded[i] for i in picked], pad_id, params)
        lr = optimizer.param_groups[0]["lr"]
        grad_norm = as_float(torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip or float("inf")))
        optimizer.step()
        scheduler.step()
        window_losses.append(value)
        all_losses.append(value)
        window_tokens += seen
        tokens_seen += seen
        if (step + 1) % params.log_every == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - window_start
            metrics = {
                "loss": sum(window_losses) / len(window_losses),
                "lr": lr,
                "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                "grad_norm": float(grad_norm),
                "epoch": step / per_epoch,
                "train_flops": sft_flops(n_compute, tokens_seen),
            }
            tracker.log_metrics(metrics, step + 1)
            tracker.progress(step + 1, steps, phase="SFT", loss=round(metrics["loss"], 4))
            final_window = metrics["loss"]
            window_losses, window_tokens, window_start = [], 0, time.perf_counter()
        if checkpoints is not None and checkpoints.due(step + 1, steps):  # every rank: save() knows who writes
            checkpoints.save(step + 1, model=model, optimizer=optimizer, scheduler=scheduler, extra={
                "window_losses": window_losses, "window_tokens": window_tokens, "all_losses": all_losses,
                "tokens_seen": tokens_seen, "final_window": final_window})
        if on_step is not None:
            on_step(StepState(step + 1, steps, epoch, batch_in_epoch + 1, value, model, optimizer, scheduler))
    model.eval()
    return {
        "loss": final_window,
        "mean_loss": sum(all_losses) / len(all_losses),
        "steps": float(steps),
        "tokens": float(tokens_seen),
        "train_flops": sft_flops(n_compute, tokens_seen),
        "runtime_s": time.perf_counter() - start,
    }
