"""The GPU check (issue 8): r1flow's SFT and GRPO trainers in bf16 on one CUDA device — tokens/s,
peak memory and MFU — at the ``tiny`` preset's teacher size and at a Qwen2.5-0.5B-shaped model
(24 layers × 896, with the tiny tokenizer's vocabulary), where MFU means something.

    scripts/gpu_check.sh                                     (the GPU machine: no network, no vLLM)
    python -m benchmarks.gpu_check --device cpu --quick      (here: the same code path, smaller)

Everything runs as the stages run it: fp32 weights and AdamW state, ``torch.autocast`` bf16
(``r1flow.precision``: one autocast context per forward), the lean KV-cache decoder for rollouts. Each figure is
taken after a warm-up run. MFU is model FLOPs per second (``r1flow.flops``: 6·N per trained token,
2·N per generated or scored token) over the device's dense bf16 peak (``r1flow.estimate``). For GRPO
it counts the whole step, rollouts included, so it is a utilisation of the step, not of its matmuls;
and like the ``train_flops`` metric it counts every row's prompt, while the decoder and the trainer
run a group's shared prompt once — with long prompts and short completions it overstates the work.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

SIZES = {  # name: (architecture, SFT batch, GRPO completion tokens)
    "tiny": (dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=384), 64, 56),
    "0.5b-shape": (dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864),
                   32, 128),
}


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the device when it is a GPU r1flow knows (else None: no MFU)."""
    from r1flow.estimate import PEAK_BF16

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for gpu, peak in PEAK_BF16.items() if gpu in name), None)


def tokenizer_and_problems(n: int):
    from r1flow.data.arith import generate_problems
    from r1flow.modeling import train_tokenizer
    from r1flow.templates import r1_zero_completion, render_prompt

    problems = generate_problems(n, seed=3)
    texts = [render_prompt(p.question, "r1_zero") + r1_zero_completion(p.solution_steps, p.answer) for p in problems]
    return train_tokenizer(texts, 512), problems


def measure(device: torch.device, run) -> dict[str, float]:
    """``run()`` once to warm up, then again timed, with the peak memory of the timed run."""
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out["seconds"] = time.perf_counter() - start
    out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return out


def check_size(size: str, device: torch.device, steps: int, quick: bool) -> dict[str, dict[str, float]]:
    from r1flow.flops import compute_params
    from r1flow.grpo.params import GRPOParams
    from r1flow.grpo.rewarding import completion_reward
    from r1flow.grpo.trainer import train_grpo
    from r1flow.modeling import ModelArch, build_model
    from r1flow.rewards import get_reward
    from r1flow.precision import autocast_forwards
    from r1flow.templates import r1_zero_completion, render_prompt
    from r1flow.train.sft import SFTParams, train_sft

    arch, batch, tokens = SIZES[size]
    if quick:
        batch, tokens = 8, 16
    tokenizer, problems = tokenizer_and_problems(2000)
    model = autocast_forwards(build_model(ModelArch(**arch), tokenizer, seed=0).to(device), torch.bfloat16)
    n = compute_params(model)
    peak = peak_flops(device)
    examples = [{"prompt": render_prompt(p.question, "r1_zero"),
                 "completion": r1_zero_completion(p.solution_steps, p.answer)} for p in problems]
    sft = SFTParams(max_steps=steps, batch_size=batch, lr=1e-4, log_every=steps, min_shared_prefix=0)
    prompts = [{"prompt": render_prompt(p.question, "r1_zero"), "gold": str(p.answer), "source": "arith"}
               for p in problems]
    grpo = GRPOParams(steps=steps, prompts_per_step=8, group_size=8, max_new_tokens=tokens, lr=1e-6,
                      log_every=steps, sample_every=10**6)
    rewards = [("accuracy", 1.0, completion_reward(get_reward("accuracy"))),
               ("format", 0.1, completion_reward(get_reward("format", template="r1_zero")))]
    sft_out = measure(device, lambda: train_sft(model, tokenizer, examples, sft))
    grpo_out = measure(device, lambda: train_grpo(model, tokenizer, prompts, rewards, grpo))
    rows = {}
    for name, out, trained in (("sft", sft_out, sft_out["tokens"]), ("grpo", grpo_out, None)):
        flops = out["train_flops"]  # GRPO: the whole step's, rollouts and reference forward included
        row = {"params_m": n / 1e6, "seconds": out["seconds"], "peak_memory_gib": out["peak_memory_gib"],
               "model_tflops_per_s": flops / out["seconds"] / 1e12}
        if trained:
            row["train_tokens_per_s"] = trained / out["seconds"]
        else:
            row["steps_per_s"] = steps / out["seconds"]
        row["mfu"] = flops / out["seconds"] / peak if peak else float("nan")
        rows[name] = row
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--quick", action="store_true", help="small batches and completions (a CPU smoke run)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --device cpu for the smoke run)")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# r1flow GPU check on {where}, torch {torch.__version__}, bf16 autocast, {args.steps} steps per run")
    print("| size | trainer | params (M) | tokens/s or steps/s | model TFLOP/s | MFU | peak memory (GiB) |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for size in args.sizes.split(","):
        rows = check_size(size, device, args.steps, args.quick)
        results[size] = rows
        for trainer, r in rows.items():
            rate = (f"{r['train_tokens_per_s']:,.0f} tok/s" if "train_tokens_per_s" in r
                    else f"{r['steps_per_s']:.2f} steps/s")
            print(f"| {size} | {trainer} | {r['params_m']:.1f} | {rate} | {r['model_tflops_per_s']:.2f} | "
                  f"{r['mfu']:.1%} | {r['peak_memory_gib']:.2f} |", flush=True)
    print("gpu_check=" + json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
