"""The GPU check (issue 8): r1flow's real-model path and its SFT and GRPO trainers in bf16 on one
device, offline. Two parts, both through the stage code (``r1flow.train.sft.train_sft``,
``r1flow.grpo.trainer.train_grpo``) with mixed precision as the stages set it up
(``r1flow.precision``): the trained policy keeps fp32 master weights and AdamW state and runs each
forward in its own bf16 autocast context (``autocast_forwards``); GRPO's reference is a separate
model with the same weights cast to bf16 whole, without gradients (``freeze``), passed as
``ref_model=``.

1. The real-model check — the path a production run takes, without weights or network. A model
   with random weights is built from the REAL Qwen2.5-Math-1.5B ``config.json`` (28 layers × 1536,
   vocabulary 151936; ``AutoConfig.from_pretrained`` then ``AutoModelForCausalLM.from_config``) with
   its real tokenizer (``r1flow.loading.load_tokenizer``), from a hub-layout folder with no weight
   files (shared/data/hub). ``--shrink`` keeps that config's vocabulary and special tokens but 2
   layers × 256 (a CPU dry run). It checks, and exits non-zero when one fails:

   - SFT on one FIXED batch (4 rows of up to 512 tokens, micro-batches of 2, lr 3e-4 constant):
     the loss of the last step is below the first's;
   - GRPO with β = 0.001, lr 1e-5 and two minibatches per rollout batch (2 prompts × 4 samples ×
     64 new tokens): after the first step, ``kl_k3`` > 0 and the mean ``ratio`` ≠ 1 (read through a
     ``ListTracker``): the reference is a model of its own and the updates reach the forwards
     (a reference that is the policy itself gives KL exactly 0; no update, a ratio of exactly 1
     in fp32). In bf16 these are not exact tests: the ratio also leaves 1 by rounding alone (old
     log-probs and the trained forward run different batch shapes), and one autocast context
     around the whole loop (stale bf16 copies of the matmul weights) still passed them on the CPU,
     with a KL about 50× smaller. So the KL of each step is printed: it should grow step by step.
     A random model cannot solve problems, so the accuracy reward is 0 everywhere; a reward that
     varies with the sampled text (its share of ASCII characters) gives the advantages a spread.

   It prints tokens/s (steps after the first, which warms up) and the peak memory of each trainer
   (``torch.cuda.max_memory_allocated``; n/a on the CPU). Full size it should need about 30 GiB
   (an estimate, not yet measured): fp32 weights, gradients and AdamW state of 1.5B parameters,
   a bf16 reference, activations of 2 × 512 tokens.

2. Throughput at the ``tiny`` preset's teacher size and at a Qwen2.5-0.5B-shaped model (24 layers ×
   896, with the tiny tokenizer's vocabulary), where MFU means something: tokens/s, peak memory
   and MFU, each figure taken after a warm-up run. MFU is model FLOPs per second (``r1flow.flops``:
   6·N per trained token, 2·N per generated or scored token) over the device's dense bf16 peak
   (``r1flow.estimate``). For GRPO it counts the whole step, rollouts included, so it is a
   utilisation of the step, not of its matmuls; and like the ``train_flops`` metric it counts
   every row's prompt, while the decoder and the trainer run a group's shared prompt once — with
   long prompts and short completions it overstates the work.

    scripts/gpu_check.sh                                  (a GPU machine: no network, no vLLM)
    PYTHON=.venv/bin/python scripts/gpu_check.sh --device cpu --quick --shrink   (CPU dry run, ~1 min)
    python -m benchmarks.gpu_check --hub-dir PATH --sizes ''       (the real-model check alone)

The config folder is ``--hub-dir``, else ``../shared/data/hub/Qwen--Qwen2.5-Math-1.5B`` (beside the
repository), else ``.gpu-deps/hub/Qwen--Qwen2.5-Math-1.5B`` (where ``scripts/gpu_check.sh --download``
or ``--copy-hub`` puts it, to carry to a machine without shared/).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HUB_NAME = "Qwen--Qwen2.5-Math-1.5B"
HUB_DIRS = (ROOT.parent / "shared" / "data" / "hub" / HUB_NAME, ROOT / ".gpu-deps" / "hub" / HUB_NAME)
SHRINK = {"num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 768, "num_attention_heads": 4,
          "num_key_value_heads": 2}

SIZES = {  # name: (architecture, SFT batch, GRPO completion tokens)
    "tiny": ({"hidden_size": 128, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
              "intermediate_size": 384}, 64, 56),
    "0.5b-shape": ({"hidden_size": 896, "num_layers": 24, "num_heads": 14, "num_kv_heads": 2,
                    "intermediate_size": 4864}, 32, 128),
}


@dataclass(frozen=True)
class RealRun:
    """Sizes of the real-model check (fit comfortably in 80 GB at full model size)."""

    sft_steps: int = 8
    sft_rows: int = 4  # the fixed batch
    sft_micro: int = 2
    sft_len: int = 512
    grpo_steps: int = 4
    grpo_prompts: int = 2
    grpo_group: int = 4
    grpo_tokens: int = 64


QUICK_RUN = RealRun(sft_steps=4, sft_len=128, grpo_steps=2, grpo_tokens=16)


# ---------------------------------------------------------------- device measurements

def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the device when it is a GPU r1flow knows (else None: no MFU)."""
    from r1flow.estimate import PEAK_BF16

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for gpu, peak in PEAK_BF16.items() if gpu in name), None)


@contextlib.contextmanager
def timed(device: torch.device) -> Iterator[dict[str, float]]:
    """Seconds and peak memory (GiB; NaN off CUDA) of the block, filled in when it ends."""
    out: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    yield out
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out["seconds"] = time.perf_counter() - start
    cuda = device.type == "cuda"
    out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else math.nan


def gib(value: float) -> str:
    """A table cell for a peak memory.

    >>> gib(31.25), gib(math.nan)
    ('31.25', 'n/a')
    """
    return "n/a" if math.isnan(value) else f"{value:.2f}"


# ---------------------------------------------------------------- data

def arith_problems(n: int):
    from r1flow.data.arith import generate_problems

    return generate_problems(n, seed=3)


def sft_examples(rows: int) -> list[dict[str, str]]:
    """``rows`` examples whose completions (many worked solutions) run past 512 tokens."""
    from r1flow.templates import r1_zero_completion, render_prompt

    problems = arith_problems(rows * 40)
    chunks = [problems[i * 40:(i + 1) * 40] for i in range(rows)]
    return [{"prompt": render_prompt(chunk[0].question, "r1_zero"),
             "completion": "\n".join(r1_zero_completion(p.solution_steps, p.answer) for p in chunk)}
            for chunk in chunks]


def grpo_prompts(n: int) -> list[dict[str, str]]:
    from r1flow.templates import render_prompt

    return [{"prompt": render_prompt(p.question, "r1_zero"), "gold": str(p.answer), "source": "arith"}
            for p in arith_problems(n)]


def ascii_share(completions: list[str], golds: list[str]) -> list[float]:
    """Share of ASCII characters: random weights sample all scripts, so this reward has a spread.

    >>> ascii_share(["ab", "a\u4e00", ""], ["", "", ""])
    [1.0, 0.5, 0.0]
    """
    return [sum(c.isascii() for c in text) / len(text) if text else 0.0 for text in completions]


def check_rewards():
    from r1flow.grpo.rewarding import completion_reward, rule_reward

    return [rule_reward("format", 0.1, template="r1_zero"),
            ("ascii_share", 1.0, completion_reward(ascii_share))]


# ---------------------------------------------------------------- the real-model check

def find_hub_dir(given: str | None) -> Path:
    """The config folder: ``given``, else the first of ``HUB_DIRS`` that holds a config.json."""
    candidates = [Path(given)] if given else list(HUB_DIRS)
    for folder in candidates:
        if (folder / "config.json").is_file():
            return folder
    raise SystemExit(f"gpu_check: no config.json in {', '.join(map(str, candidates))}; pass --hub-dir, "
                     "or run scripts/gpu_check.sh --copy-hub where shared/ exists and carry .gpu-deps/")


def real_config(folder: Path, shrink: bool):
    """The checkpoint's own config; ``shrink``: 2 layers × 256, same vocabulary and special tokens."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder, **(SHRINK if shrink else {}))


def random_model(config, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Random weights for ``config``, initialised on ``device`` (fast on a GPU)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with device:
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def frozen_reference(policy, config, device: torch.device):
    """GRPO's reference as a stage loads it: a separate model with the policy's weights, bf16, frozen."""
    from r1flow.precision import freeze

    ref = random_model(config, device, torch.bfloat16)
    ref.load_state_dict(policy.state_dict())
    return freeze(ref, torch.bfloat16)


def loss_falls(losses: list[float]) -> bool:
    """SFT's verdict: finite per-step losses, the last below the first."""
    return len(losses) >= 2 and all(map(math.isfinite, losses)) and losses[-1] < losses[0]


def policy_moves(kl: list[float], ratio: list[float]) -> bool:
    """GRPO's verdict: after the first step, every step's ``kl_k3`` > 0 and mean ratio ≠ 1 (finite)."""
    later = list(zip(kl, ratio))[1:]
    return bool(later) and all(math.isfinite(k) and k > 0 and math.isfinite(r) and r != 1 for k, r in later)


def after_warmup(values: list[float]) -> float:
    """Mean of the values after the first (warm-up) one."""
    rest = values[1:] or values
    return sum(rest) / len(rest)


def no_math_attention(device: torch.device):
    """On CUDA, SDPA's math kernel is excluded: a padded batch that would fall back to it (fp32
    scores for every head, kept for backward) fails loudly instead (``r1flow.attention``)."""
    import contextlib

    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION])


def run_sft(policy, tokenizer, run: RealRun, device: torch.device) -> dict:
    from r1flow.tracking import ListTracker
    from r1flow.train.sft import SFTParams, train_sft

    params = SFTParams(max_steps=run.sft_steps, batch_size=run.sft_rows, micro_batch_size=run.sft_micro,
                       max_len=run.sft_len, lr=3e-4, schedule="constant", warmup_ratio=0.0, log_every=1)
    tracker = ListTracker()
    with timed(device) as out, no_math_attention(device):
        summary = train_sft(policy, tokenizer, sft_examples(run.sft_rows), params, tracker)
    losses = tracker.series("loss")
    return {**out, "steps": run.sft_steps, "tokens": summary["tokens"], "losses": losses,
            "ok": loss_falls(losses),
            "tokens_per_s": after_warmup(tracker.series("tokens_per_s")),
            "check": f"loss {losses[0]:.3f} → {losses[-1]:.3f} (must fall)"}


def run_grpo(policy, reference, tokenizer, run: RealRun, device: torch.device) -> dict:
    from r1flow.grpo.params import GRPOParams
    from r1flow.grpo.trainer import train_grpo
    from r1flow.tracking import ListTracker

    params = GRPOParams(steps=run.grpo_steps, prompts_per_step=run.grpo_prompts, group_size=run.grpo_group,
                        max_new_tokens=run.grpo_tokens, beta=0.001, num_minibatches=2,
                        micro_batch_size=run.grpo_prompts * run.grpo_group // 2, lr=1e-5,
                        log_every=1, sample_every=10**6)
    tracker = ListTracker()
    with timed(device) as out, no_math_attention(device):
        train_grpo(policy, tokenizer, grpo_prompts(64), check_rewards(), params, tracker, ref_model=reference)
    kl, ratio = tracker.series("kl_k3"), tracker.series("ratio")
    return {**out, "steps": run.grpo_steps, "kl_k3": kl, "ratio": ratio, "ok": policy_moves(kl, ratio),
            "reward_std": tracker.series("reward/std"),
            "tokens_per_s": after_warmup(tracker.series("tokens_per_s")),
            "check": "kl_k3 " + ", ".join(f"{k:.2e}" for k in kl) + "; ratio − 1 "
                     + ", ".join(f"{r - 1:+.1e}" for r in ratio) + " (after step 1: KL > 0, ratio ≠ 1)"}


def real_check(folder: Path, shrink: bool, device: torch.device, run: RealRun) -> dict:
    """SFT then GRPO on a random-weight model of the real config; prints a table, returns the rows."""
    from r1flow.flops import compute_params
    from r1flow.loading import load_tokenizer
    from r1flow.precision import autocast_forwards

    config = real_config(folder, shrink)
    tokenizer = load_tokenizer(str(folder))
    policy = autocast_forwards(random_model(config, device, torch.float32), torch.bfloat16)
    shape = f"{config.num_hidden_layers} layers × {config.hidden_size}, vocabulary {config.vocab_size}"
    print(f"## Real-model path: {folder.name} config{' (shrunk)' if shrink else ''} ({shape}), "
          f"random weights, real tokenizer ({len(tokenizer)} tokens), "
          f"{compute_params(policy) / 1e6:,.1f}M parameters")
    print("| trainer | steps | tokens/s | peak memory (GiB) | check | result |")
    print("|---|---|---|---|---|---|")
    rows = {"sft": run_sft(policy, tokenizer, run, device)}
    print_real_row("sft", rows["sft"])
    reference = frozen_reference(policy, config, device)  # GRPO starts from the SFT-trained weights
    rows["grpo"] = run_grpo(policy, reference, tokenizer, run, device)
    print_real_row("grpo", rows["grpo"])
    return {"model": folder.name, "shrink": shrink, "sizes": asdict(run), **rows}


def print_real_row(trainer: str, row: dict) -> None:
    unit = "completion tok/s" if trainer == "grpo" else "tok/s"
    print(f"| {trainer} | {row['steps']} | {row['tokens_per_s']:,.0f} {unit} | "
          f"{gib(row['peak_memory_gib'])} | {row['check']} | {'ok' if row['ok'] else 'FAILED'} |", flush=True)


# ---------------------------------------------------------------- throughput at two sizes

def tokenizer_and_problems(n: int):
    from r1flow.modeling import train_tokenizer
    from r1flow.templates import r1_zero_completion, render_prompt

    problems = arith_problems(n)
    texts = [render_prompt(p.question, "r1_zero") + r1_zero_completion(p.solution_steps, p.answer)
             for p in problems]
    return train_tokenizer(texts, 512), problems


def measure(device: torch.device, run) -> dict[str, float]:
    """``run()`` once to warm up, then again timed, with the peak memory of the timed run."""
    run()
    with timed(device) as timing:
        out = run()
    return {**out, **timing}


def check_size(size: str, device: torch.device, steps: int, quick: bool) -> dict[str, dict[str, float]]:
    from r1flow.flops import compute_params
    from r1flow.grpo.params import GRPOParams
    from r1flow.grpo.rewarding import rule_reward
    from r1flow.grpo.trainer import train_grpo
    from r1flow.modeling import ModelArch, build_model
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
    rewards = [rule_reward("accuracy", 1.0), rule_reward("format", 0.1, template="r1_zero")]
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


def throughput(sizes: list[str], device: torch.device, steps: int, quick: bool) -> dict:
    print(f"## Throughput, {steps} steps per run after a warm-up run")
    print("| size | trainer | params (M) | tokens/s or steps/s | model TFLOP/s | MFU | peak memory (GiB) |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for size in sizes:
        rows = results[size] = check_size(size, device, steps, quick)
        for trainer, r in rows.items():
            rate = (f"{r['train_tokens_per_s']:,.0f} tok/s" if "train_tokens_per_s" in r
                    else f"{r['steps_per_s']:.2f} steps/s")
            print(f"| {size} | {trainer} | {r['params_m']:.1f} | {rate} | {r['model_tflops_per_s']:.2f} | "
                  f"{r['mfu']:.1%} | {gib(r['peak_memory_gib'])} |", flush=True)
    return results


# ---------------------------------------------------------------- entry point

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--hub-dir", help=f"the {HUB_NAME} config folder "
                        f"(default: {' or '.join(map(str, HUB_DIRS))})")
    parser.add_argument("--shrink", action="store_true",
                        help="the real config at 2 layers × 256 (a CPU dry run)")
    parser.add_argument("--real", action=argparse.BooleanOptionalAction, default=True,
                        help="run the real-model check (default: yes)")
    parser.add_argument("--steps", type=int, default=10, help="steps per throughput run")
    parser.add_argument("--sizes", help=f"throughput sizes, comma-separated, '' for none "
                        f"(default: {','.join(SIZES)}; with --quick: tiny)")
    parser.add_argument("--quick", action="store_true",
                        help="small batches, short sequences and completions, fewer steps (a CPU smoke run)")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = "tiny" if args.quick else ",".join(SIZES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --device cpu for the dry run)")
    folder = find_hub_dir(args.hub_dir) if args.real else None
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# r1flow GPU check on {where}, torch {torch.__version__}, bf16 autocast (fp32 master weights)")
    results: dict = {}
    if folder is not None:
        results["real"] = real_check(folder, args.shrink, device, QUICK_RUN if args.quick else RealRun())
    sizes = [s for s in args.sizes.split(",") if s]
    if sizes:
        results["throughput"] = throughput(sizes, device, args.steps, args.quick)
    failed = [name for name in ("sft", "grpo") if folder is not None and not results["real"][name]["ok"]]
    print("gpu_check=" + json.dumps(results, sort_keys=True))
    print(f"gpu_check: FAILED {', '.join(failed)}" if failed else "gpu_check: all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
