"""The GRPO training loop (paper §2.2.1; DeepSeekMath eq. 3 for the per-token form).

One step (one rollout batch):

1. take ``prompts_per_step`` prompts — positions ``step·k …`` of an endless sequence of shuffled
   epochs, a pure function of (seed, step), so a resumed run continues exactly;
2. sample G completions each through the engine (policy in eval mode; ``sync_weights`` after the
   updates), seeded by (seed, step);
3. score them with the weighted rewards, A_i = (r_i − mean_group) / std_group
   (``group_advantages``); groups whose rewards are all equal are counted and, with
   ``filter_zero_variance`` (DAPO), dropped;
4. log-probs of the old policy (once, no grad) and of the frozen reference (only when β > 0);
5. ``mu`` passes × ``num_minibatches`` AdamW steps (linear warmup, grad clipping); each minibatch
   in micro-batches of ``micro_batch_size`` rows whose gradients accumulate.

Deliberate choices:

1. With ``mu == 1`` and one minibatch the policy that sampled is the policy being trained, so the
   old log-probs are the current ones detached (ratio = exp(logp − logp.detach()) = 1, gradient
   A·∇logp) and their forward pass is skipped — TRL does the same.
2. β = 0 builds and calls no reference model at all, and ``kl_k3``/``kl_k1`` are not logged —
   unless ``log_kl`` asks for them (one extra no-grad forward per step; the loss is unchanged).
3. Loss denominators (tokens, sequences, ``max_new_tokens`` for ``fixed_length``) span the whole
   minibatch over all micro-batches and ranks, so the accumulated gradient is exactly the
   minibatch's, whatever the micro-batch size; peak memory follows the micro-batch, not G.
4. Log-probs run on exactly the engine's prompt+completion ids (no re-tokenization), with each
   micro-batch's left prompt padding and right completion padding trimmed, each distinct prompt
   run once for its G rows and only completion positions projected to the vocabulary
   (``shared_prompt_logprobs``). Log-probs use the sampling temperature; top-p truncation is not
   reflected in them (as in TRL and verl).
5. A minibatch with no rows (every group filtered) takes no optimizer step: the schedule counts
   optimizer steps actually taken.
6. Several processes: each rank samples its own slice of the step's prompts; token counts and
   gradients are summed over ranks in one place (``all_ranks_sum``). One process is the main path.
   A sharded policy (``r1flow.sharding``, FSDP2) samples through a whole copy, reduce-scatters its
   gradients in the backward passes, and pads short ranks with zero-weight micro-batches.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from r1flow.attention import use_native_gqa
from r1flow.checkpoint import Checkpointer
from r1flow.decode import DecodeEngine
from r1flow.engine import GenerationEngine, Rollouts
from r1flow.flops import compute_params, grpo_step_flops
from r1flow.grpo.batch import RolloutBatch, batch_logprobs, padding_pass, rollout_batch
from r1flow.grpo.loss import grpo_loss, zero_variance_groups
from r1flow.grpo.params import GRPOParams
from r1flow.grpo.rewarding import RewardScores, RewardSpec, reward_metrics, score_batch
from r1flow.ranks import all_ranks_sum, rank_world
from r1flow.sharding import as_float, backward_share, micro_batches, sum_gradients
from r1flow.tracking import NullTracker, Tracker
from r1flow.train.memory import adamw, checkpoint_layers

SAMPLE_ROWS = 8
_STAT_KEYS = ("kl_k3", "kl_k1", "clip_fraction/low", "clip_fraction/high", "ratio")


# ---------------------------------------------------------------- order and seeds

@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(f"grpo-order-{seed}-{epoch}").shuffle(order)
    return tuple(order)


def step_prompt_indices(n: int, k: int, seed: int, step: int) -> list[int]:
    """Prompts of rollout batch ``step`` (0-based): each epoch sees every prompt once.

    >>> sorted(step_prompt_indices(4, 2, 0, 0) + step_prompt_indices(4, 2, 0, 1))
    [0, 1, 2, 3]
    """
    return [_epoch_order(n, seed, pos // n)[pos % n] for pos in range(step * k, (step + 1) * k)]


def rollout_seed(seed: int, step: int, rank: int = 0) -> int:
    """Sampling seed of one rank's rollouts at ``step``."""
    return random.Random(f"grpo-rollout-{seed}-{step}-{rank}").getrandbits(62)


# ---------------------------------------------------------------- gradients

def minibatch_backward(model, batch: RolloutBatch, rows: Tensor, params: GRPOParams, *,
                       total_tokens: float, num_sequences: int) -> dict[str, float]:
    """Accumulate into ``.grad`` the GRPO loss gradient of minibatch ``rows``, micro-batch by micro-batch.

    ``total_tokens``/``num_sequences`` count the whole minibatch (all ranks). Returns the summed
    loss, the token count and token-weighted sums of the loss statistics.
    """
    sums: dict[str, float] = defaultdict(float)
    world = rank_world()[1]
    for micro in micro_batches(rows, params.micro_batch_size, model):
        if micro is None:
            backward_share(padding_pass(model, rows.device, params.temperature).sum() * 0.0, model, world)
            continue
        logp = batch.logprobs(model, micro, params.temperature)  # [n, L']
        length = logp.size(1)
        old = logp.detach() if batch.old_logp is None else batch.old_logp[micro, :length]
        ref = None if batch.ref_logp is None else batch.ref_logp[micro, :length]
        loss, stats = grpo_loss(logp, old, ref, batch.advantages[micro], batch.completion_mask[micro, :length],
                                beta=params.beta, eps_low=params.eps_low, eps_high=params.eps_high,
                                mode=params.loss_agg, total_tokens=total_tokens,
                                num_sequences=num_sequences, max_len=params.max_new_tokens)
        backward_share(loss, model, world)  # a share of the minibatch's loss: summed over ranks
        tokens = float(stats["num_tokens"])
        sums["loss"] += float(loss.detach())
        sums["tokens"] += tokens
        for key in _STAT_KEYS:
            if key in stats:
                sums[key] += float(stats[key]) * tokens
    return dict(sums)


def make_optimizer(model, params: GRPOParams) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (weight decay on matrices only) with a linear warmup to a constant lr."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": params.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = adamw(groups, next(model.parameters()).device, lr=params.lr)
    warmup = params.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    return optimizer, scheduler


def _apply_update(model, optimizer, scheduler, grad_clip: float) -> float:
    trainable = [p for p in model.parameters() if p.requires_grad]
    sum_gradients(model, trainable)
    norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip or float("inf"))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return as_float(norm)


# ---------------------------------------------------------------- the loop

@dataclass
class GRPOState:
    """What ``on_step`` sees after each rollout batch (everything a checkpoint needs)."""

    step: int
    total_steps: int
    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    optimizer_steps: int
    metrics: dict[str, float]


class _Clock:
    """Seconds spent per phase of one step (every phase reported, 0 when it did not run)."""

    def __init__(self) -> None:
        self.times = dict.fromkeys(("generate", "reward", "logprob", "backward", "optimizer"), 0.0)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.times[name] += time.perf_counter() - start


def _frozen_copy(model):
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _optimize(model, batch: RolloutBatch, optimizer, scheduler, params: GRPOParams, clock: _Clock, *,
              seed: int) -> dict[str, float]:
    """``mu`` passes × ``num_minibatches`` optimizer steps over the batch; averaged statistics."""
    device = batch.advantages.device
    shuffle = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = defaultdict(float)
    norms, losses, lr = [], [], optimizer.param_groups[0]["lr"]
    for _ in range(params.mu):
        order = torch.arange(len(batch))
        if params.num_minibatches > 1:
            order = torch.randperm(len(batch), generator=shuffle)
        for rows in order.to(device).tensor_split(params.num_minibatches):
            counts = torch.tensor([float(batch.completion_mask[rows].sum()), float(rows.numel())],
                                  dtype=torch.float64, device=device)
            all_ranks_sum([counts])
            if counts[1] == 0:
                continue
            with clock("backward"):
                mb = minibatch_backward(model, batch, rows, params, total_tokens=float(counts[0]),
                                        num_sequences=int(counts[1]))
            lr = optimizer.param_groups[0]["lr"]
            with clock("optimizer"):
                norms.append(_apply_update(model, optimizer, scheduler, params.grad_clip))
            losses.append(mb.pop("loss"))
            for key, value in mb.items():
                sums[key] += value
    tokens = max(sums.pop("tokens", 0.0), 1.0)
    out = {k.replace("/", "_"): v / tokens for k, v in sums.items()}
    out["clip_fraction"] = out.get("clip_fraction_low", 0.0) + out.get("clip_fraction_high", 0.0)
    out.update(loss=sum(losses) / max(len(losses), 1), grad_norm=sum(norms) / max(len(norms), 1),
               lr=lr, optimizer_steps=float(len(norms)))
    return out


def _rollout_metrics(rollouts: Rollouts, scores: RewardScores, group_size: int) -> dict[str, float]:
    metrics = reward_metrics(scores)
    metrics["response_length/mean"] = float(rollouts.completion_lengths.float().mean())
    metrics["truncated_fraction"] = sum(r == "length" for r in rollouts.finish_reasons) / len(rollouts)
    metrics["zero_variance_groups"] = float(zero_variance_groups(scores.total, group_size).sum())
    return metrics


def _sample_rows(step: int, prompts: list[dict], rollouts: Rollouts, rewards: Tensor, group: int) -> list[dict]:
    """The first completion of each of the first ``SAMPLE_ROWS`` prompts, for a logged table."""
    picked = range(0, min(len(rollouts), SAMPLE_ROWS * group), group)
    return [{"step": step, "source": prompts[i]["source"], "prompt": prompts[i]["prompt"],
             "completion": rollouts.texts[i], "reward": float(rewards[i])} for i in picked]


def train_grpo(model, tokenizer, prompts: list[dict], reward_fns: list[RewardSpec], params: GRPOParams,
               tracker: Tracker | None = None, *, engine: GenerationEngine | None = None, ref_model=None,
               on_step: Callable[[int, GRPOState], None] | None = None,
               checkpoints: Checkpointer | None = None, stop: tuple[str, ...] = ()) -> dict[str, float]:
    """Train ``model`` in place with GRPO on ``prompts`` (``{"prompt", "gold", "source"}``, prompt
    already rendered, and an optional unique ``"key"`` that each rollout row hands to ``keyed``
    rewards: ``r1flow.grpo.rewarding``); returns a summary: steps, optimizer steps, first and last
    mean reward, runtime.

    With ``checkpoints``, the loop first continues from the newest complete checkpoint, if any
    (the reference model, when there is one, is taken before: it stays the starting policy), and
    saves one every ``checkpoints.every`` steps. ``stop``: strings that end a completion besides EOS
    (the template's, ``r1flow.templates.stop_strings``).
    """
    if not prompts:
        raise ValueError("train_grpo needs at least one prompt")
    tracker = tracker or NullTracker()
    rank, world = rank_world()
    k, group = params.prompts_per_step, params.group_size
    torch.manual_seed(params.seed)
    engine = engine or DecodeEngine(model, tokenizer, batch_size=k * group)
    wants_ref = params.beta > 0 or params.log_kl
    ref = None if not wants_ref else ref_model if ref_model is not None else _frozen_copy(model)
    for m in (model, ref) if ref is not None else (model,):
        use_native_gqa(m)  # same attention, without copying grouped KV heads
    if params.gradient_checkpointing:
        checkpoint_layers(model)
    optimizer, scheduler = make_optimizer(model, params)
    device = next(model.parameters()).device
    needs_old = params.mu > 1 or params.num_minibatches > 1
    model.train()
    start, window, rewards, optimizer_steps, first = time.perf_counter(), defaultdict(list), [], 0, 0
    n_compute, train_flops, done = compute_params(model), 0.0, 0
    restored = checkpoints.restore(model=model, optimizer=optimizer, scheduler=scheduler) if checkpoints else None
    if restored is not None:
        first, rewards, optimizer_steps = restored.step, restored.extra["rewards"], restored.extra["optimizer_steps"]
        window = defaultdict(list, restored.extra["window"])
        train_flops = float(restored.extra.get("train_flops", 0.0))
    engine.sync_weights(model)  # an engine holding its own copy (vLLM) starts from these weights
    spent = params.budget_spent(train_flops)  # a budget-stopped run, resumed
    for step in range(first, params.steps if not spent else first):
        clock, step_start = _Clock(), time.perf_counter()
        picked = step_prompt_indices(len(prompts), k * world, params.seed, step)[rank * k:(rank + 1) * k]
        chosen = [prompts[i] for i in picked]
        with clock("generate"):
            rollouts = engine.generate([p["prompt"] for p in chosen], n=group,
                                       max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                                       top_p=params.top_p, seed=rollout_seed(params.seed, step, rank), stop=stop)
        rows = [chosen[i] for i in rollouts.prompt_index]
        keys = [p["key"] for p in rows] if all("key" in p for p in rows) else None  # routes keyed rewards
        with clock("reward"):
            scores = score_batch(reward_fns, [p["prompt"] for p in rows], rollouts.texts,
                                 [p["gold"] for p in rows], keys=keys)
        batch = rollout_batch(rollouts, scores.total, params, device)
        with clock("logprob"):
            if needs_old:
                batch.old_logp = batch_logprobs(model, batch, params.micro_batch_size, params.temperature)
            if ref is not None:
                batch.ref_logp = batch_logprobs(ref, batch, params.micro_batch_size, params.temperature)
        metrics = _rollout_metrics(rollouts, scores, group)
        metrics.update(_optimize(model, batch, optimizer, scheduler, params, clock,
                                 seed=rollout_seed(params.seed, step, rank) + 1))
        engine.sync_weights(model)
        optimizer_steps += int(metrics.pop("optimizer_steps"))
        step_time = time.perf_counter() - step_start
        metrics.update({f"time/{name}": t for name, t in clock.times.items()})
        metrics.update(step_time_s=step_time, tokens_per_s=float(rollouts.completion_lengths.sum()) / step_time)
        tokens = torch.tensor([float(rollouts.prompt_mask.sum()), float(rollouts.completion_lengths.sum())],
                              device=device)
        all_ranks_sum([tokens])  # every rank counts the same FLOPs, so all stop at the same step
        train_flops += grpo_step_flops(n_compute, int(tokens[0]), int(tokens[1]), mu=params.mu,
                                       reference=ref is not None, old_policy=needs_old)
        rewards.append(metrics["reward/mean"])
        for key, value in metrics.items():
            window[key].append(value)
        done = step + 1
        spent = params.budget_spent(train_flops)
        if rank == 0 and (done % params.log_every == 0 or done == params.steps or spent):
            tracker.log_metrics({**{key: sum(v) / len(v) for key, v in window.items()}, "train_flops": train_flops},
                                done)
            tracker.progress(done, params.steps, phase="GRPO", reward=round(metrics["reward/mean"], 4))
        if done % params.log_every == 0:
            window = defaultdict(list)
        if rank == 0 and (done % params.sample_every == 0 or done == 1):
            tracker.log_table(_sample_rows(done, rows, rollouts, scores.total, group), f"samples_step{done}")
        if checkpoints is not None and not spent and checkpoints.due(done, params.steps):  # save() knows who writes
            checkpoints.save(done, model=model, optimizer=optimizer, scheduler=scheduler,
                             extra={"rewards": rewards, "optimizer_steps": optimizer_steps, "window": dict(window),
                                    "train_flops": train_flops})
        if on_step is not None:
            on_step(done, GRPOState(done, params.steps, model, optimizer, scheduler, optimizer_steps, metrics))
        if spent:
            break
    model.eval()
    return {"steps": float(done or first), "optimizer_steps": float(optimizer_steps), "resumed_from_step": float(first),
            "reward_first": rewards[0], "reward_last": rewards[-1], "train_flops": train_flops,
            "runtime_s": time.perf_counter() - start}
