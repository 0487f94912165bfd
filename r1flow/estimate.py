"""GPU-hours per stage of a preset, before running it: the stage's FLOPs (``r1flow.flops``: 2·N per
generated or prefilled token, 6·N per trained token) over an assumed sustained throughput.

Generation and training get separate utilisations because they behave differently: training is
compute-bound (a well-fed dense bf16 step reaches 30–45% of peak), autoregressive sampling with
the HF/torch engines is memory-bound (a few percent of peak; vLLM does several times better).
What a run really generates is unknown before it runs, so completions are assumed to fill
``fill`` of ``max_new_tokens`` and curation/rejection to keep ``kept`` of the samples. Every
assumption is a field of ``Assumptions`` and is printed with the table: the numbers are a budget
to plan GPU time with, not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

from r1flow.config import RL_STAGES, PipelineConfig
from r1flow.flops import grpo_step_flops, sft_flops

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
"""Dense bf16 tensor-core peak, FLOP/s per GPU (vendor datasheets, without sparsity)."""
KNOWN_PARAMS = {  # N of r1flow.flops (compute-bearing parameters) from the models' configs
    "Qwen/Qwen2.5-Math-1.5B": 1_543_714_304,   # tied embeddings: the head computes, all count
    "Qwen/Qwen2.5-Math-7B": 7_070_619_136,     # untied: 7.62B less the 545M input embedding
    "Qwen/Qwen2.5-0.5B": 494_032_768,          # tied
    "Qwen/Qwen2.5-1.5B": 1_543_714_304,
    "meta-llama/Llama-3.1-8B": 7_504_924_672,  # untied: 8.03B less the 525M input embedding
}


@dataclass(frozen=True)
class Assumptions:
    gpu: str = "H100"
    gpus: int = 1
    train_mfu: float = 0.35
    generate_mfu: float = 0.04
    fill: float = 0.5
    prompt_tokens: int = 150
    kept: float = 0.5
    eval_problems: int = 500


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    generate_flops: float
    train_flops: float
    gpu_hours: float


def _hours(generate: float, train: float, a: Assumptions) -> float:
    """GPU-hours: the stage's FLOPs over one GPU's sustained rate (on ``a.gpus`` GPUs the wall-clock
    time is this over ``a.gpus``)."""
    peak = PEAK_BF16[a.gpu]
    return (generate / (peak * a.generate_mfu) + train / (peak * a.train_mfu)) / 3600.0


def _problems(bench: str, cap: int | None, a: Assumptions) -> int:
    """Rows of a benchmark file when it can be read here, else ``a.eval_problems``."""
    from r1flow.data.benchmarks import load_benchmark

    try:
        count = len(load_benchmark(bench))
    except (OSError, ValueError):
        count = a.eval_problems
    return min(count, cap) if cap else count


def _sft_tokens(train, rows: float, per_row: int) -> int:
    """Tokens an SFT run trains on: ``max_steps`` batches when set, else ``epochs`` passes."""
    return round((train.max_steps * train.batch_size if train.max_steps else rows * train.epochs) * per_row)


def _sequence(max_new_tokens: int, a: Assumptions) -> tuple[int, int]:
    return a.prompt_tokens, round(a.fill * max_new_tokens)


def model_params(config: PipelineConfig, overrides: dict[str, int] | None = None) -> dict[str, int]:
    """N of the teacher and student: ``overrides`` first, then ``KNOWN_PARAMS`` by hub id; a
    ``build`` base is counted by building it (tiny presets)."""
    out = dict(overrides or {})
    for role in ("teacher", "student"):
        if role in out:
            continue
        source = getattr(config.base, role).source
        if source in KNOWN_PARAMS:
            out[role] = KNOWN_PARAMS[source]
        elif source == "build":
            out[role] = _built_params(getattr(config.base, f"{role}_arch"), config.base.corpus.vocab_size)
        else:
            raise ValueError(f"base.{role}.source {source!r}: parameter count unknown; give it "
                             f"(--{role}-params)")
    return out


def _built_params(arch, vocab_size: int) -> int:
    """N of a tiny model built from ``arch`` (on the meta device: no memory, no time)."""
    import torch
    from transformers import Qwen2ForCausalLM

    from r1flow.flops import compute_params
    from r1flow.modeling import qwen2_config

    with torch.device("meta"):
        return compute_params(Qwen2ForCausalLM(qwen2_config(arch, vocab_size)))


def estimate(config: PipelineConfig, params: dict[str, int], a: Assumptions = Assumptions()) -> list[StageEstimate]:
    """Per stage, its held-out evaluations included (RL stages: at the start, every ``eval_every``
    steps and at the end); ``params``: N of ``teacher`` and ``student``."""
    n, n_student = params["teacher"], params["student"]
    ev = config.evaluate
    prompt, completion = _sequence(ev.max_new_tokens, a)
    problems = sum(_problems(bench, ev.max_problems, a) for bench in ev.benchmarks)
    evaluation = 2.0 * n * problems * ev.k * (prompt + completion)
    rows_sampled = config.rejection_sampling.num_prompts * config.rejection_sampling.samples_per_prompt
    sft_rows = a.kept * rows_sampled / (1.0 - config.rejection_sampling.non_reasoning_fraction)
    out = []

    def add(stage: str, generate: float, train: float, evaluated: bool = True, model_n: int = n) -> None:
        generate += evaluation * model_n / n if evaluated else 0.0
        out.append(StageEstimate(stage, generate, train, _hours(generate, train, a)))

    add("base", 0.0, 0.0)  # real presets start from published weights: only their evaluation
    for stage in RL_STAGES:
        rl = config.section(stage)
        g = rl.grpo
        p, c = _sequence(g.max_new_tokens, a)
        rows = g.prompts_per_step * g.group_size * rl.launch.processes * rl.launch.machines  # per rank × ranks
        step = grpo_step_flops(n, rows * p, rows * c, mu=g.mu, reference=g.beta > 0 or g.log_kl,
                               old_policy=g.mu > 1 or g.num_minibatches > 1)
        generate = 2.0 * n * rows * (p + c) * g.steps
        evaluations = 2 + len(range(rl.eval_every, g.steps, rl.eval_every)) if rl.eval_every else 2  # start, end
        add(stage, generate + (evaluations - 1) * evaluation, step * g.steps - generate)
    cs = config.cold_start
    p, c = _sequence(cs.max_new_tokens, a)
    sampled = cs.num_prompts * cs.samples_per_prompt if "r1_zero" in cs.sources else 0
    kept = min(a.kept * sampled, cs.num_prompts * (cs.curation.max_per_question or cs.samples_per_prompt))
    add("cold_start", 2.0 * n * sampled * (p + c), sft_flops(n, _sft_tokens(cs.train, kept, p + c)))
    rs = config.rejection_sampling
    p, c = _sequence(rs.max_new_tokens, a)
    add("rejection_sampling", 2.0 * n * rows_sampled * (p + c), 0.0, evaluated=False)
    add("sft", 0.0, sft_flops(n, _sft_tokens(config.sft.train, sft_rows, p + c)))
    add("reward_model", 0.0, 0.0, evaluated=False)  # a small Bradley–Terry model: negligible here
    add("distill", 0.0, sft_flops(n_student, _sft_tokens(config.distill.train, sft_rows, p + c)), model_n=n_student)
    return out


def render(rows: list[StageEstimate], a: Assumptions) -> str:
    """A markdown table, the assumptions under it."""
    lines = [f"| stage | generation (PFLOP) | training (PFLOP) | GPU-hours | hours on {a.gpus} GPU(s) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.stage} | {r.generate_flops / 1e15:,.0f} | {r.train_flops / 1e15:,.0f} | {r.gpu_hours:,.1f} | "
              f"{r.gpu_hours / a.gpus:,.1f} |" for r in rows]
    total = sum(r.gpu_hours for r in rows)
    lines.append(f"| **total** | | | **{total:,.1f}** | **{total / a.gpus:,.1f}** |")
    lines += ["", f"Assumed: {a.gpus} × {a.gpu} ({PEAK_BF16[a.gpu] / 1e12:.0f} TFLOP/s bf16 each), training at "
              f"{a.train_mfu:.0%} and generation at {a.generate_mfu:.0%} of peak, completions filling "
              f"{a.fill:.0%} of max_new_tokens, {a.prompt_tokens}-token prompts, {a.kept:.0%} of samples kept, "
              f"{a.eval_problems} problems per benchmark file that cannot be read here."]
    return "\n".join(lines) + "\n"


def stage_hours(config: PipelineConfig, stage: str) -> float | None:
    """Estimated wall-clock hours of one stage on its own GPUs (``launch.processes × machines``),
    under the default ``Assumptions`` — what its timeouts are derived from; None when the
    estimate cannot be made (a base model of unknown size) or does not cover the stage."""
    try:
        rows = estimate(config, model_params(config))
        launch = config.section(stage).launch
    except ValueError:
        return None
    return next((r.gpu_hours / (launch.processes * launch.machines) for r in rows if r.stage == stage), None)
