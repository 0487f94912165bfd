"""GRPO trainer on a tiny CPU model: learning, gradient accumulation, reference use, filtering."""

from __future__ import annotations

import math
import os

import pytest
import torch

from r1flow.engine import HFEngine, Rollouts
from r1flow.grpo.logprobs import token_logprobs
from r1flow.grpo.params import GRPOParams
from r1flow.grpo.rewarding import completion_reward, reward_metrics, rule_reward, score_batch
from r1flow.grpo.trainer import (
    RolloutBatch,
    batch_logprobs,
    minibatch_backward,
    rollout_batch,
    rollout_seed,
    step_prompt_indices,
    train_grpo,
)
from r1flow.modeling import ModelArch, build_model, train_tokenizer
from r1flow.rewards import BatchScores, Graded
from r1flow.tracking import ListTracker

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ARCH = ModelArch(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)
PROMPTS = [{"prompt": f"q {i} {'b' * (i % 3)} =", "gold": str(i), "source": "toy"} for i in range(12)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["a b c d e f g 1 2 3 + = q <think> </think> bb"] * 20, 280)


def model_for(tok, seed: int = 0):
    return build_model(ARCH, tok, seed=seed)


def frac_a(completions: list[str], golds: list[str]) -> list[float]:
    return [c.count("a") / max(len(c), 1) for c in completions]


A_REWARD = [("a", 1.0, completion_reward(frac_a))]


class RecordingTracker(ListTracker):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[dict]]] = []
        self.progress_calls: list[tuple[int, int, dict]] = []

    def log_table(self, rows, name):
        self.tables.append((name, rows))

    def progress(self, step, total, **info):
        self.progress_calls.append((step, total, info))


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


# ---------------------------------------------------------------- learning and bookkeeping

def test_reward_rises_on_a_learnable_reward(tok):
    tracker = ListTracker()
    params = GRPOParams(steps=30, prompts_per_step=4, group_size=8, max_new_tokens=8, lr=3e-3, seed=0)
    summary = train_grpo(model_for(tok), tok, PROMPTS, A_REWARD, params, tracker)
    rewards = tracker.series("reward/mean")
    assert len(rewards) == 30 and summary["optimizer_steps"] == 30
    # A random 271-token policy writes "a" in ~1/270 of its characters; GRPO must push it up.
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.1, rewards


def test_one_step_changes_parameters_and_logs_every_metric(tok):
    model = model_for(tok)
    before = snapshot(model)
    tracker, seen = RecordingTracker(), []
    params = GRPOParams(steps=2, prompts_per_step=3, group_size=4, max_new_tokens=6, beta=0.1, mu=2,
                        num_minibatches=2, micro_batch_size=5, sample_every=2, lr=1e-3)
    train_grpo(model, tok, PROMPTS, A_REWARD + [("len", 0.5, lambda p, c, g: [len(x) / 10 for x in c])],
               params, tracker, on_step=lambda step, state: seen.append((step, state.optimizer_steps)))
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)
    assert seen == [(1, 4), (2, 8)]  # mu=2 passes × 2 minibatches per rollout batch
    step, metrics = tracker.history[0]
    expected = {"reward/mean", "reward/std", "reward/a/mean", "reward/len/mean", "kl_k3", "kl_k1",
                "clip_fraction", "clip_fraction_low", "clip_fraction_high", "response_length/mean",
                "truncated_fraction", "zero_variance_groups", "reward_timeouts", "loss", "grad_norm", "lr",
                "tokens_per_s", "step_time_s", "time/generate", "time/reward", "time/logprob",
                "time/backward", "time/optimizer"}
    assert step == 1 and expected <= set(metrics), expected - set(metrics)
    assert metrics["kl_k3"] >= 0 and metrics["lr"] == 1e-3
    assert [c[:2] for c in tracker.progress_calls] == [(1, 2), (2, 2)]
    assert [name for name, _ in tracker.tables] == ["samples_step1", "samples_step2"]
    assert set(tracker.tables[0][1][0]) == {"step", "source", "prompt", "completion", "reward"}


class TokenCounting(HFEngine):
    """The HF engine, remembering the prompt and completion tokens of every batch it returns."""

    counts: list[tuple[int, int]] = []

    def generate(self, *args, **kwargs):
        out = super().generate(*args, **kwargs)
        self.counts.append((int(out.prompt_mask.sum()), int(out.completion_mask.sum())))
        return out


def test_training_flops_are_logged_and_a_budget_stops_the_run(tok):
    model, tracker = model_for(tok), ListTracker()
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel() * (
        model.get_output_embeddings().weight is not model.get_input_embeddings().weight)
    engine = TokenCounting(model, tok)
    engine.counts = []
    # One step: 2N per token generating, 6N·mu updating, 2N for the reference, 2N for old log-probs (mu=2).
    params = GRPOParams(steps=50, prompts_per_step=2, group_size=4, max_new_tokens=6, lr=1e-3, mu=2, beta=0.1)
    per_token = 2 * n + 6 * n * 2 + 2 * n + 2 * n
    budget = 2.5 * per_token * 2 * 4 * 10  # about 2.5 steps of ~10 tokens per row
    params = params.model_copy(update={"max_train_flops": budget})
    summary = train_grpo(model, tok, PROMPTS, A_REWARD, params, tracker, engine=engine)
    spent = [per_token * (p + c) for p, c in engine.counts]
    steps = len(engine.counts)
    assert 2 <= steps < 50 and summary["steps"] == steps
    assert sum(spent[:-1]) < budget <= sum(spent)  # stopped at the first step that reached the budget
    assert summary["train_flops"] == pytest.approx(sum(spent))
    logged = [metrics["train_flops"] for _, metrics in tracker.history]
    assert logged == pytest.approx([sum(spent[:i + 1]) for i in range(steps)])


def test_a_retry_after_a_budget_stop_trains_no_further(tok, tmp_path):
    """The budget stop saves no checkpoint of its own, so a retry (the stage died after training,
    e.g. while saving) replays the same steps from the last regular checkpoint and stops at the
    same step with the same weights."""
    from r1flow.checkpoint import Checkpointer
    from r1flow.store_local import LocalStore

    params = GRPOParams(steps=50, prompts_per_step=2, group_size=4, max_new_tokens=6, lr=1e-3, max_train_flops=1.0)
    n = sum(p.numel() for p in model_for(tok).parameters())
    params = params.model_copy(update={"max_train_flops": 8 * 8 * 10 * n * 3.5})  # 8N × 8 rows × ~10 tokens: ~3.5 steps
    first_model, second_model = model_for(tok), model_for(tok)
    store = LocalStore(tmp_path / "store")
    first = train_grpo(first_model, tok, PROMPTS, A_REWARD, params, None,
                       checkpoints=Checkpointer(store, "ckpt", every=1, keep=50))
    retry = train_grpo(second_model, tok, PROMPTS, A_REWARD, params, None,
                       checkpoints=Checkpointer(store, "ckpt", every=1, keep=50))
    assert 2 <= first["steps"] < 50 and retry["steps"] == first["steps"]
    assert retry["train_flops"] == pytest.approx(first["train_flops"])
    a, b = snapshot(first_model), snapshot(second_model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_run_and_pure_prompt_order(tok):
    def run():
        model = model_for(tok)
        train_grpo(model, tok, PROMPTS, A_REWARD,
                   GRPOParams(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=5, lr=1e-3), None)
        return snapshot(model)

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # Prompt order: a pure function of (seed, step); 12 prompts, 5 per step → step 2 straddles epochs.
    epoch0 = step_prompt_indices(12, 5, 7, 0) + step_prompt_indices(12, 5, 7, 1) + step_prompt_indices(12, 5, 7, 2)[:2]
    assert sorted(epoch0) == list(range(12))
    assert step_prompt_indices(12, 5, 7, 2) == step_prompt_indices(12, 5, 7, 2) != step_prompt_indices(12, 5, 8, 2)
    assert rollout_seed(0, 1) != rollout_seed(0, 2) != rollout_seed(1, 2)


# ---------------------------------------------------------------- reference model

def count_forwards(model) -> list[int]:
    """Decoder passes: log-probs run the decoder by itself for completions (``chunked_logprobs``)."""
    calls = [0]
    model.get_decoder().register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("beta,log_kl", [(0.0, False), (0.05, False), (0.0, True)])
def test_reference_is_called_only_when_beta_is_positive_or_kl_is_logged(tok, beta, log_kl):
    ref = model_for(tok, seed=1)
    calls = count_forwards(ref)
    tracker = ListTracker()
    params = GRPOParams(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=5, beta=beta, log_kl=log_kl,
                        micro_batch_size=3)
    policy = model_for(tok)
    train_grpo(policy, tok, PROMPTS, A_REWARD, params, tracker, ref_model=ref)
    if beta == 0 and not log_kl:
        assert calls[0] == 0 and "kl_k3" not in tracker.history[0][1]
        return
    assert calls[0] == 2 * 3 * 2  # 2 steps × ceil(8 rows / 3) micro-batches × (prompts, completions)
    assert tracker.series("kl_k3")[0] > 0  # the reference is another random model
    if log_kl:  # logging only: the same training as without a reference
        plain = model_for(tok)
        train_grpo(plain, tok, PROMPTS, A_REWARD, params.model_copy(update={"log_kl": False}), ListTracker())
        assert all(torch.equal(a, b) for a, b in zip(policy.parameters(), plain.parameters()))


# ---------------------------------------------------------------- micro-batch accumulation

@pytest.fixture(scope="module")
def rollouts(tok) -> Rollouts:
    model = model_for(tok)
    prompts = [p["prompt"] for p in PROMPTS[:3]]  # 3 different prompt lengths → left padding differs
    out = HFEngine(model, tok).generate(prompts, n=4, max_new_tokens=6, temperature=1.0, seed=3)
    # Completion lengths 1..6 (as if EOS came at different places), so denominators matter.
    lengths = torch.tensor([1, 2, 3, 4, 5, 6, 6, 5, 4, 3, 2, 1])
    out.completion_mask = (torch.arange(6).unsqueeze(0) < lengths.unsqueeze(1)).long()
    return out


@pytest.mark.parametrize("mode", ["sequence_mean", "token_mean", "fixed_length"])
def test_micro_batch_size_does_not_change_the_gradient(tok, rollouts, mode):
    model = model_for(tok)
    gen = torch.Generator().manual_seed(0)
    batch = RolloutBatch.from_rollouts(rollouts, torch.randn(12, generator=gen), torch.device("cpu"))
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    with torch.no_grad():
        logp = token_logprobs(model, ids, mask, batch.prompt_ids.size(1))  # [12, 6]
    # Old and reference log-probs away from the current ones, so clipping and KL both act.
    batch.old_logp = logp + 0.3 * torch.randn(logp.shape, generator=gen)
    batch.ref_logp = logp + 0.3 * torch.randn(logp.shape, generator=gen)
    rows = torch.arange(12)
    grads = {}
    for size in (1, 4, 12):
        params = GRPOParams(prompts_per_step=3, group_size=4, max_new_tokens=6, micro_batch_size=size,
                            loss_agg=mode, beta=0.1, eps_low=0.1, eps_high=0.1)
        model.zero_grad(set_to_none=True)
        stats = minibatch_backward(model, batch, rows, params, total_tokens=float(batch.completion_mask.sum()),
                                   num_sequences=12)
        assert stats["tokens"] == 42  # 2·(1+…+6)
        assert 0 < stats["clip_fraction/low"] + stats["clip_fraction/high"] < stats["tokens"]
        grads[size] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert grads[12].abs().sum() > 0
    for size in (1, 4):
        assert torch.allclose(grads[size], grads[12], rtol=1e-4, atol=1e-7), (size, (grads[size] - grads[12]).abs().max())


def test_on_policy_shortcut_equals_computing_old_logprobs(tok, rollouts):
    # mu = 1, one minibatch: old log-probs are the current ones detached, no extra forward.
    model = model_for(tok)
    batch = RolloutBatch.from_rollouts(rollouts, torch.linspace(-1, 1, 12), torch.device("cpu"))
    params = GRPOParams(prompts_per_step=3, group_size=4, max_new_tokens=6, micro_batch_size=5)
    grads = []
    for old in (None, batch_logprobs(model, batch, 5, params.temperature)):
        model.zero_grad(set_to_none=True)
        batch.old_logp = old
        stats = minibatch_backward(model, batch, torch.arange(12), params, total_tokens=42.0, num_sequences=12)
        assert stats["ratio"] == pytest.approx(stats["tokens"], rel=1e-5)  # token-weighted sum of ratios ≈ 1 each
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- zero-variance groups

def test_filter_drops_exactly_the_equal_reward_groups(rollouts):
    rewards = torch.tensor([1.0, 1, 1, 1, 0, 1, 0, 0, 0.5, 0.5, 0.5, 0.5])  # groups 0 and 2 are flat
    kept = rollout_batch(rollouts, rewards, GRPOParams(prompts_per_step=3, group_size=4, filter_zero_variance=True),
                         torch.device("cpu"))
    assert torch.equal(kept.completion_ids, rollouts.completion_ids[4:8])
    assert torch.equal(kept.prompt_ids, rollouts.prompt_ids[4:8])
    # group 1: mean 0.25, unbiased std 0.5 → A = (±0.75 | −0.25) / (0.5 + 1e-4)
    assert torch.allclose(kept.advantages, torch.tensor([-0.25, 0.75, -0.25, -0.25]) / 0.5001)
    whole = rollout_batch(rollouts, rewards, GRPOParams(prompts_per_step=3, group_size=4), torch.device("cpu"))
    assert len(whole) == 12 and torch.count_nonzero(whole.advantages[:4]) == 0


@pytest.mark.parametrize("filter_zero_variance", [True, False])
def test_all_equal_rewards_leave_parameters_unchanged(tok, filter_zero_variance):
    model = model_for(tok)
    before = snapshot(model)
    tracker = ListTracker()
    params = GRPOParams(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=5, beta=0.0, weight_decay=0.0,
                        lr=1e-2, filter_zero_variance=filter_zero_variance)
    summary = train_grpo(model, tok, PROMPTS, [("const", 1.0, lambda p, c, g: [0.7] * len(c))], params, tracker)
    assert tracker.series("zero_variance_groups") == [2.0, 2.0]
    # Filtered: no rows, no optimizer step. Unfiltered: advantages exactly 0, so Adam's step is 0.
    assert summary["optimizer_steps"] == (0 if filter_zero_variance else 2)
    assert all(torch.equal(v, before[k]) for k, v in model.named_parameters())


def test_mixed_batch_counts_flat_groups_and_still_learns(tok):
    def reward(prompts, completions, golds):  # prompts without "b" always score 1
        return [len(c) / 10 if "b" in p else 1.0 for p, c in zip(prompts, completions)]

    model = model_for(tok)
    before = snapshot(model)
    tracker = ListTracker()
    params = GRPOParams(steps=1, prompts_per_step=12, group_size=4, max_new_tokens=5, filter_zero_variance=True)
    train_grpo(model, tok, PROMPTS, [("mixed", 1.0, reward)], params, tracker)
    # 4 of the 12 prompts have no "b": at least those 4 groups are flat.
    assert tracker.series("zero_variance_groups")[0] >= 4
    assert any(not torch.equal(v, before[k]) for k, v in model.named_parameters())


# ---------------------------------------------------------------- rewards

def test_rewards_are_weighted_and_timeouts_counted():
    timed_out = completion_reward(lambda cs, gs: BatchScores([float(c == g) for c, g in zip(cs, gs)], 1))
    specs = [("acc", 1.0, timed_out),
             rule_reward("format", 0.1, template="r1_zero"),
             ("echo", 2.0, lambda ps, cs, gs: Graded([float(p in c) for p, c in zip(ps, cs)], 2))]
    good = " <think> 2 + 3 = 5 </think> <answer> 5 </answer>"
    scores = score_batch(specs, ["x", "5"], [good, "7"], [good, "8"])
    # row 0: acc 1 + 0.1·format 1 + 2·echo 0 = 1.1; row 1: 0 + 0.1·0 + 2·0 = 0
    assert torch.allclose(scores.total, torch.tensor([1.1, 0.0]))
    metrics = reward_metrics(scores)
    assert metrics["reward/acc/mean"] == 0.5 and metrics["reward/format/mean"] == 0.5
    assert metrics["reward_timeouts"] == 3.0  # 1 from a BatchScores list, 2 from a Graded tuple
    with pytest.raises(ValueError, match="echo"):
        score_batch([("echo", 1.0, lambda ps, cs, gs: [1.0])], ["x", "y"], ["a", "b"], ["a", "b"])


def test_rewards_of_other_sources_are_nan_and_left_out_of_their_mean():
    from r1flow.grpo.rewarding import reward_metrics, score_batch

    specs = [("math", 1.0, lambda p, c, g: [1.0, 0.0, float("nan"), float("nan")]),
             ("judge", 0.5, lambda p, c, g: [float("nan"), float("nan"), 2.0, 4.0])]
    scores = score_batch(specs, ["a"] * 4, ["x"] * 4, [""] * 4)
    # totals: row0 1.0, row1 0.0, row2 0.5*2 = 1.0, row3 0.5*4 = 2.0
    assert scores.total.tolist() == [1.0, 0.0, 1.0, 2.0]
    metrics = reward_metrics(scores)
    assert metrics["reward/math/mean"] == 0.5 and metrics["reward/judge/mean"] == 3.0


def test_bfloat16_mixed_precision_trains_fp32_weights_with_bf16_matmuls(tok):
    """``dtype: bfloat16`` (the GPU presets): each forward runs in bf16 autocast
    (``r1flow.precision``); weights and optimizer stay fp32, and GRPO still learns on this toy reward."""
    from r1flow.precision import autocast_forwards

    model, tracker = autocast_forwards(model_for(tok), torch.bfloat16), ListTracker()
    seen = []
    hook = model.lm_head.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    train_grpo(model, tok, PROMPTS, A_REWARD, GRPOParams(steps=3, prompts_per_step=2, group_size=4,
                                                         max_new_tokens=5, lr=1e-3), tracker)
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(math.isfinite(m["loss"]) for _, m in tracker.history)
    assert not torch.is_autocast_enabled("cpu")  # autocast is scoped to each forward, nothing leaks out