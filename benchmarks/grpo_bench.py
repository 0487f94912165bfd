"""GRPO step time: r1flow's trainer against TRL's ``GRPOTrainer`` on the same model and work.

    python -m benchmarks.grpo_bench [--reps 5] [--steps 3] [--sizes small,10m] [--bare-prompts]   (``make bench``)

Both sides get the same locally built Qwen2 model and tokenizer, the same 8 prompts × 8
generations, exactly ``tokens`` completion tokens (EOS suppressed in both), β = 0, token-mean
aggregation (TRL ``loss_type="dapo"``), fp32, the same reward function and thread count. Each
repetition runs each side in a fresh subprocess, alternating which goes first; a worker times
``steps`` optimizer steps after one warm-up step and reports their median and its peak RSS.
Before timing, the two losses are compared on one fixed batch (they must agree).

Output: a table per size, then ``grpo_speedup_vs_trl=<TRL median / ours>`` (≈1M parameters,
32 tokens) and ``grpo_speedup_vs_trl_10m=<…>`` (≈8M parameters, 128 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {  # name: (architecture, completion tokens, line label)
    "small": (dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=384), 32,
              "grpo_speedup_vs_trl"),
    "10m": (dict(hidden_size=256, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1024), 128,
            "grpo_speedup_vs_trl_10m"),
}
PROMPTS, GENERATIONS = 8, 8


def digit_reward(completions: list, *_, **__) -> list[float]:
    """The shared reward: share of digit characters in the completion (cheap, deterministic)."""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def build_model(size: str, out: Path) -> Path:
    from r1flow.data.arith import generate_problems
    from r1flow.modeling import ModelArch, build_model as build, save_model, train_tokenizer
    from r1flow.templates import r1_zero_completion, render_prompt

    problems = generate_problems(400, seed=1)
    texts = [render_prompt(p.question, "r1_zero") + r1_zero_completion(p.solution_steps, p.answer) for p in problems]
    tokenizer = train_tokenizer(texts, 512)
    path = out / size
    save_model(build(ModelArch(**SIZES[size][0]), tokenizer, seed=0), tokenizer, path)
    return path


def bench_prompts(n: int) -> list[str]:
    """R1-Zero-template prompts (~100 tokens), or the bare questions (~10) with R1FLOW_BENCH_BARE=1."""
    from r1flow.data.arith import rl_prompts
    from r1flow.templates import render_prompt

    bare = os.environ.get("R1FLOW_BENCH_BARE") == "1"
    return [p.question if bare else render_prompt(p.question, "r1_zero") for p in rl_prompts(n, seed=5)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- workers (one per subprocess)

def run_ours(model_dir: str, tokens: int, steps: int) -> tuple[list[float], dict[str, float]]:
    """Per-step seconds after the warm-up step, and the median seconds of each phase."""
    from r1flow.decode import DecodeEngine
    from r1flow.grpo.params import GRPOParams
    from r1flow.grpo.rewarding import completion_reward
    from r1flow.grpo.trainer import train_grpo
    from r1flow.modeling import load_model
    from r1flow.tracking import ListTracker

    class FixedLength(DecodeEngine):
        def generate(self, prompts, **kw):
            return super().generate(prompts, **{**kw, "suppress_eos": True})

    model, tok = load_model(model_dir)
    prompts = [{"prompt": p, "gold": "", "source": "bench"} for p in bench_prompts(PROMPTS * (steps + 1))]
    params = GRPOParams(steps=steps + 1, prompts_per_step=PROMPTS, group_size=GENERATIONS, max_new_tokens=tokens,
                        beta=0.0, loss_agg="token_mean", lr=1e-6)  # default micro-batch: 16 rows
    times: list[float] = []
    last = [0.0]

    def on_step(step, state):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    tracker = ListTracker()
    last[0] = time.perf_counter()
    train_grpo(model, tok, prompts, [("digits", 1.0, completion_reward(digit_reward))], params, tracker,
               engine=FixedLength(model, tok, batch_size=PROMPTS * GENERATIONS), on_step=on_step)
    phases = {k.removeprefix("time/"): statistics.median(tracker.series(k)[1:])
              for k in tracker.history[0][1] if k.startswith("time/")}
    return times[1:], phases


def trl_trainer(model_dir: str, tokens: int, steps: int, out_dir: str):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from r1flow.modeling import load_model

    model, tok = load_model(model_dir)
    args = GRPOConfig(output_dir=out_dir, report_to="none", use_cpu=True, save_strategy="no", bf16=False,
                      per_device_train_batch_size=PROMPTS * GENERATIONS, num_generations=GENERATIONS,
                      max_completion_length=tokens, generation_kwargs={"min_new_tokens": tokens},
                      loss_type="dapo", beta=0.0, temperature=1.0, learning_rate=1e-6, max_steps=steps,
                      logging_steps=10_000, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    data = Dataset.from_dict({"prompt": bench_prompts(PROMPTS * steps)})
    return GRPOTrainer(model=model, reward_funcs=digit_reward, args=args, train_dataset=data, processing_class=tok)


def run_trl(model_dir: str, tokens: int, steps: int) -> tuple[list[float], dict[str, float]]:
    from transformers import TrainerCallback

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as out:
        trainer = trl_trainer(model_dir, tokens, steps + 1, out)
        trainer.add_callback(Clock())
        trainer.train()
    return times[1:], {}


def check_same_loss(model_dir: str, tokens: int) -> tuple[float, float]:
    """Both losses on one fixed rollout batch (random completions, fixed advantages)."""
    import torch

    from r1flow.grpo.logprobs import token_logprobs
    from r1flow.grpo.loss import group_advantages, grpo_loss

    with tempfile.TemporaryDirectory() as out:
        trainer = trl_trainer(model_dir, tokens, 1, out)
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        tok = trainer.processing_class
        g = torch.Generator().manual_seed(0)
        n, prompt_len = PROMPTS * GENERATIONS, 12
        prompt_ids = torch.randint(1, len(tok), (n, prompt_len), generator=g)
        completion_ids = torch.randint(1, len(tok), (n, tokens), generator=g)
        completion_ids[completion_ids == tok.eos_token_id] = 1
        mask = torch.ones_like(completion_ids)
        adv = group_advantages(torch.rand(n, generator=g), GENERATIONS)
        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        with torch.no_grad():
            logp = token_logprobs(trainer.model, ids, torch.ones_like(ids), prompt_len)
            old = logp + 0.3 * torch.randn(logp.shape, generator=g)  # off-policy: ratios ≠ 1, some clipped
            ours, _ = grpo_loss(logp, old, None, adv, mask, beta=0.0, eps_low=0.2, eps_high=0.2,
                                mode="token_mean", total_tokens=float(mask.sum()), num_sequences=n)
            theirs = trainer._compute_loss(trainer.model, {
                "prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids),
                "completion_ids": completion_ids, "completion_mask": mask, "advantages": adv,
                "old_per_token_logps": old, "num_items_in_batch": mask.sum()})
    return float(ours), float(theirs)


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.impl == "check":
        ours, theirs = check_same_loss(args.model, args.tokens)
        print(json.dumps({"ours": ours, "trl": theirs}))
        return
    times, phases = (run_ours if args.impl == "ours" else run_trl)(args.model, args.tokens, args.steps)
    print(json.dumps({"median_s": statistics.median(times), "times": times, "phases": phases,
                      "peak_rss_mb": peak_rss_mb()}))


# ---------------------------------------------------------------- driver

def spawn(impl: str, model: Path, tokens: int, steps: int, threads: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "benchmarks.grpo_bench", "--worker", impl, "--model", str(model),
           "--tokens", str(tokens), "--steps", str(steps), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    if out.returncode:
        raise SystemExit(f"{impl} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def matmul_gflops(threads: int, n: int = 1024, reps: int = 20) -> float:
    """fp32 GFLOP/s of a plain square matmul at ``threads`` (the ceiling to compare against)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def step_flops(params: int, prompt_tokens: int, tokens: int) -> float:
    """Matmul FLOPs of the work one of our steps does (2·P per token forward, 6·P forward and
    backward): prefill of each distinct prompt, G·tokens sampled per prompt, then training on each
    distinct prompt once plus every completion. Attention scores are small at these lengths."""
    rows = PROMPTS * GENERATIONS
    sampling = 2 * params * (PROMPTS * prompt_tokens + rows * tokens)
    return sampling + 6 * params * (PROMPTS * prompt_tokens + rows * tokens)


def bench_size(size: str, root: Path, reps: int, steps: int, threads: int) -> float:
    from r1flow.modeling import load_model

    model, tokens = build_model(size, root), SIZES[size][1]
    losses = spawn("check", model, tokens, 0, threads)
    if abs(losses["ours"] - losses["trl"]) > 1e-5 * max(1.0, abs(losses["trl"])):
        raise SystemExit(f"losses differ on the fixed batch: ours {losses['ours']} vs TRL {losses['trl']}")
    runs: dict[str, list[dict]] = {"ours": [], "trl": []}
    for rep in range(reps):
        for impl in (("ours", "trl") if rep % 2 == 0 else ("trl", "ours")):
            runs[impl].append(spawn(impl, model, tokens, steps, threads))
    med = {impl: statistics.median(r["median_s"] for r in rs) for impl, rs in runs.items()}
    rss = {impl: max(r["peak_rss_mb"] for r in rs) for impl, rs in runs.items()}
    policy, tokenizer = load_model(str(model))
    params = sum(p.numel() for p in policy.parameters())
    print(f"\n{size}: {params / 1e6:.2f}M parameters, {PROMPTS}×{GENERATIONS} × {tokens} tokens, "
          f"{threads} threads, {reps} reps × {steps} steps; same loss on a fixed batch: "
          f"{losses['ours']:.6g} vs {losses['trl']:.6g}")
    print("| impl | median s/step | per-rep medians | peak RSS MB |\n|---|---|---|---|")
    for impl in ("ours", "trl"):
        reps_s = ", ".join(f"{r['median_s']:.3f}" for r in runs[impl])
        print(f"| {impl} | {med[impl]:.3f} | {reps_s} | {rss[impl]:.0f} |")
    phases = {k: statistics.median(r["phases"][k] for r in runs["ours"]) for k in runs["ours"][0]["phases"]}
    phases["overhead"] = max(0.0, med["ours"] - sum(phases.values()))
    print("ours, where a step goes: " + ", ".join(f"{k} {v:.3f} s ({v / med['ours']:.0%})" for k, v in phases.items()))
    prompt_tokens = statistics.mean(len(tokenizer(p)["input_ids"]) for p in bench_prompts(PROMPTS))
    print(f"prompts: {prompt_tokens:.0f} tokens on average")
    achieved = step_flops(params, round(prompt_tokens), tokens) / med["ours"] / 1e9
    ceiling = matmul_gflops(threads)
    print(f"ours: {achieved:.1f} GFLOP/s achieved, {achieved / ceiling:.0%} of a plain {ceiling:.0f} GFLOP/s matmul")
    return med["trl"] / med["ours"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed steps per worker (after one warm-up)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--sizes", default="small,10m")
    p.add_argument("--bare-prompts", action="store_true",
                   help="bare questions (~10 tokens) instead of the R1-Zero template (~100 tokens)")
    p.add_argument("--worker", choices=("ours", "trl", "check"))
    p.add_argument("--model")
    p.add_argument("--tokens", type=int)
    args = p.parse_args(argv)
    if args.bare_prompts:
        os.environ["R1FLOW_BENCH_BARE"] = "1"  # inherited by the worker subprocesses
    if args.worker:
        args.impl = args.worker
        worker(args)
        return
    ratios = {}
    with tempfile.TemporaryDirectory() as root:
        for size in args.sizes.split(","):
            if size not in SIZES:
                raise SystemExit(f"--sizes: unknown size {size!r}; choose from {sorted(SIZES)}")
            ratios[size] = bench_size(size, Path(root), args.reps, args.steps, args.threads)
    print()
    for size, ratio in ratios.items():
        print(f"{SIZES[size][2]}={ratio:.2f}")


if __name__ == "__main__":
    main()
