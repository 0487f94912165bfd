"""What several stages share: torch setup, model folders, prompt sets, evaluation with logging.

Model-producing artifacts hold their model in ``model/``; the base artifact holds ``teacher/`` and
``student/``. A folder may instead hold ``source.json`` (a hub id + pinned revision) so real
presets point at hub models without copying weights into the store.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from r1flow.chunks import ChunkLog
from r1flow.stages.runner import StageContext, UserError

SAMPLE_ROWS = 32


def setup_torch(ctx: StageContext):
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(int(ctx.runtime.get("threads", 2)))
    torch.manual_seed(int(ctx.runtime.get("seed", 0)))
    hf_logging.disable_progress_bar()
    device = ctx.runtime.get("device", "cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per process under `accelerate launch`
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    return torch.device(device)


def model_dir(artifact: Path, which: str = "teacher") -> Path:
    """The model folder inside an artifact: ``model/`` if present, else ``<which>/``."""
    for candidate in (artifact / "model", artifact / which):
        if candidate.is_dir():
            return candidate
    raise UserError(f"artifact {artifact} holds no model folder (model/ or {which}/)")


def load_policy(artifact: Path, ctx: StageContext, which: str = "teacher", *, frozen: bool = False):
    """(model, tokenizer) on the stage's device, from an artifact's model folder or source.json.

    Under ``dtype: bfloat16`` a trained model keeps fp32 weights and runs each forward in bf16
    autocast; a ``frozen`` one (GRPO's reference) is cast to bf16 whole, without gradients
    (``r1flow.precision``)."""
    from r1flow.modeling import load_model
    from r1flow.precision import autocast_forwards, compute_dtype, freeze

    where = model_location(artifact, which, ctx)
    model, tok = load_model(where["model_path"], revision=where.get("revision"),
                            trust_remote_code=where.get("trust_remote_code", False))
    ctx.sources[id(model)] = where  # where a vLLM engine for this model starts from
    dtype = compute_dtype(ctx.runtime)
    model = freeze(model, dtype) if frozen else autocast_forwards(model, dtype)
    return model.to(setup_torch(ctx)), tok


def evaluation_engine(ctx: StageContext, model, tokenizer):
    """The engine ``evaluate.engine`` names, on ``model``'s current weights. A vLLM engine starts
    once per model and stage, from where the model was loaded (or, for a model built in this
    stage, a copy saved for it), and is sent the weights in memory before each evaluation."""
    from r1flow.engine import make_engine

    cfg = ctx.runtime.get("evaluate", {})
    if cfg.get("engine", "torch") != "vllm":
        return make_engine(cfg.get("engine", "torch"), model, tokenizer, batch_size=int(cfg.get("batch_size", 128)))
    engine = ctx.engines.get(id(model))
    if engine is None:
        where = ctx.sources.get(id(model)) or {"model_path": str(_saved_for_vllm(ctx, model, tokenizer))}
        engine = ctx.engines[id(model)] = make_engine("vllm", model, tokenizer, **where, **_vllm_settings(ctx))
    engine.sync_weights(model)
    return engine


def _saved_for_vllm(ctx: StageContext, model, tokenizer) -> Path:
    import atexit
    import shutil
    import tempfile

    from r1flow.modeling import save_model

    folder = tempfile.mkdtemp(prefix="vllm-start-", dir=ctx.workdir.parent)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the engine reads it until the stage ends
    return save_model(model, tokenizer, Path(folder))


def model_location(artifact: Path, which: str = "teacher", ctx: StageContext | None = None) -> dict[str, Any]:
    """Where the model of an artifact loads from (``r1flow.loading``): its folder, or what a real
    base's ``source.json`` names — a hub id at its pinned commit, a folder, or the local copy of an
    ``s3://`` mirror — with the remote-code setting. Engines that load by themselves (vLLM) use it too."""
    from r1flow.loading import local_path, revision_of

    folder = model_dir(artifact, which)
    source = folder / "source.json"
    if not source.exists():
        return {"model_path": str(folder)}
    spec = json.loads(source.read_text())
    endpoint = ctx.spec.s3_endpoint_url if ctx is not None else None
    return {"model_path": local_path(spec, s3_endpoint_url=endpoint), "revision": revision_of(spec),
            "trust_remote_code": bool(spec.get("trust_remote_code", False))}


def load_tokenizer_of(artifact: Path, ctx: StageContext, which: str = "teacher"):
    """The tokenizer of an artifact's model, wherever the model lives (``model_location``)."""
    from r1flow.loading import load_tokenizer

    where = model_location(artifact, which, ctx)
    return load_tokenizer(where["model_path"], revision=where.get("revision"),
                          trust_remote_code=where.get("trust_remote_code", False))


def vllm_engine_kw(ctx: StageContext, artifact: Path, which: str = "teacher") -> dict[str, Any]:
    """What ``make_engine("vllm", …)`` needs beyond the model object: where vLLM loads the policy
    from, and the stage's dtype."""
    return {**model_location(artifact, which, ctx), **_vllm_settings(ctx)}


def _vllm_settings(ctx: StageContext) -> dict[str, Any]:
    return {"dtype": ctx.runtime.get("dtype", "float32"),
            "tensor_parallel_size": int(ctx.runtime.get("evaluate", {}).get("tensor_parallel_size", 1))}


def train_sft_stage(ctx: StageContext, model, tokenizer, examples: list[dict], params) -> tuple[Any, dict[str, float]]:
    """SFT of ``model`` as the stage's ``launch`` asks — fully sharded under ``strategy: fsdp`` on
    several ranks (``r1flow.sharding``) — checkpointed, with fault points. Returns the whole trained
    model (None on the ranks other than 0: rank 0 alone saves and evaluates it) and the final
    metrics."""
    from r1flow.sharding import shard, unsharded, wants_sharding
    from r1flow.train.sft import train_sft

    sharded = wants_sharding(ctx.config.launch)
    if sharded:
        shard(model)
    final = train_sft(model, tokenizer, examples, params, ctx.tracker, on_step=lambda s: ctx.fault_point(s.step),
                      checkpoints=ctx.checkpointer())
    if sharded:
        model = unsharded(model)  # every rank takes part in the gather
    return (model if ctx.rank == 0 else None), final


def save_policy(model, tokenizer, ctx: StageContext, sub: str = "model") -> Path:
    from r1flow.diskspace import disk_writes, ensure_free, tensor_bytes
    from r1flow.modeling import save_model

    ensure_free(ctx.workdir, tensor_bytes(model.state_dict()), f"the {sub} weights")
    with disk_writes(f"the {sub} weights", ctx.workdir / sub):
        return save_model(model, tokenizer, ctx.workdir / sub)


def arith_task(ctx: StageContext):
    from r1flow.data.arith import TaskParams

    return TaskParams.model_validate(ctx.runtime.get("task", {}))


def problems(ctx: StageContext, source: str, n: int, seed: int) -> list[dict[str, str]]:
    """Problems ``{"id", "question", "answer"}`` to sample or train on: ``"arith"`` draws ``n`` fresh
    synthetic ones with ``seed`` (held-out problems excluded); a problem file — ``gsm8k=PATH``,
    ``math500=PATH`` or a JSONL of question/answer (``r1flow.data.benchmarks``) — gives its first
    ``n`` rows, gold answers normalized as for evaluation (GSM8K's ``#### 42`` becomes ``42``)."""
    if source == "arith":
        from r1flow.data.arith import rl_prompts

        return [p.row() for p in rl_prompts(n, seed, arith_task(ctx))]
    from r1flow.data.benchmarks import load_benchmark

    return load_benchmark(source)[:n]


def evaluate(ctx: StageContext, model, tokenizer, template: str, *, step: int = 0,
             name: str = "eval", write: bool = True,
             save_chunks: bool = False) -> tuple[dict[str, float], dict[str, dict]]:
    """Paper §3 evaluation on every configured benchmark; logs ``eval/<bench>/<metric>`` at ``step``.

    Returns the metrics and, per benchmark, each problem's (strict, lenient) pass@1 over its k
    samples — what a paired comparison of two checkpoints needs. Under DDP only rank 0 evaluates
    (the ranks hold the same weights); the others get empty results. ``save_chunks``: each batch's
    samples are saved as they come (``r1flow.chunks``; a killed evaluation resumes), and a shard
    run (``launch.shards``) only generates its batches, returning empty results."""
    if ctx.rank != 0:
        return {}, {}
    from r1flow.data.benchmarks import benchmark_name, load_benchmark
    from r1flow.evaluate import evaluate_model

    cfg = ctx.runtime.get("evaluate", {})
    engine = evaluation_engine(ctx, model, tokenizer)
    metrics: dict[str, float] = {}
    per_problem: dict[str, dict] = {}
    for bench in cfg.get("benchmarks", ["arith_heldout"]):
        problems = load_benchmark(bench)[: cfg.get("max_problems") or None]
        short = benchmark_name(bench)
        chunks = ctx.chunk_log(f"{name}-{short}") if save_chunks else None
        result = evaluate_model(engine, problems, template=template, k=int(cfg.get("k", 4)),
                                temperature=float(cfg.get("temperature", 0.6)),
                                top_p=float(cfg.get("top_p", 0.95)),
                                max_new_tokens=int(cfg.get("max_new_tokens", 64)),
                                seed=int(ctx.runtime.get("seed", 0)),
                                batch_size=max(1, int(cfg.get("batch_size", 128)) // 4),
                                chunks=chunks, shard=ctx.spec.shard,
                                answer_format=cfg.get("answer_format", "auto"))
        if chunks and chunks.loaded:
            ctx.log(f"evaluation {short}: reused {chunks.loaded} saved chunk(s)")
        if result is None:  # a shard: its chunks are saved for the merging run
            continue
        metrics.update({f"{name}/{short}/{k}": v for k, v in result.metrics.items()})
        ctx.set_tags(**{f"r1flow.{name}.{short}.digest": benchmark_digest(problems, cfg, template)})
        per_problem[short] = problem_scores(result.samples)
        if write:
            ctx.tracker.log_table(result.samples[:SAMPLE_ROWS], f"{name}_{short}_step{step}")
            ctx.tracker.log_dataset(f"benchmark/{short}", problems, context="evaluation", source=str(bench))
    if ctx.spec.shard:
        return {}, {}
    ctx.tracker.log_metrics(metrics, step)
    if write:
        previous = json.loads((ctx.workdir / "eval.json").read_text()) if (ctx.workdir / "eval.json").exists() else {}
        ctx.write_json("eval.json", {**previous, **metrics, "template": template})
    return metrics, per_problem


def benchmark_digest(problems: list[dict[str, str]], cfg: dict[str, Any], template: str) -> str:
    """What a metric was measured on: the problems evaluated and the sampling settings. Two
    models' pass@1 compare only under the same digest (the champion rule checks it)."""
    from r1flow.store import digest_json

    from r1flow.rewards.parsing import resolve_answer_format

    settings = {k: cfg.get(k) for k in ("k", "temperature", "top_p", "max_new_tokens")}
    settings["answer_format"] = resolve_answer_format(cfg.get("answer_format", "auto"), template)  # how it was graded
    return digest_json({"problems": problems, "settings": settings, "template": template})


def problem_scores(samples: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Per problem id: (strict, lenient) mean correctness over its samples."""
    from r1flow.evaluate import lenient_match

    sums: dict[str, list[float]] = {}
    for s in samples:
        acc = sums.setdefault(s["id"], [0.0, 0.0, 0.0])
        acc[0] += s["correct"]
        acc[1] += max(s["correct"], float(lenient_match(s["completion"], s["gold"])))
        acc[2] += 1
    return {pid: (a[0] / a[2], a[1] / a[2]) for pid, a in sums.items()}


def paired_gain(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
                which: int = 0) -> tuple[float, float]:
    """Mean per-problem gain and its standard error (paired over the same problems)."""
    import math

    diffs = [after[pid][which] - before[pid][which] for pid in after if pid in before]
    if len(diffs) < 2:
        return (diffs[0] if diffs else 0.0), 0.0
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(var / len(diffs))


def sft_examples_from(path: Path) -> list[dict[str, Any]]:
    """The SFT dataset an upstream stage wrote (rows ``prompt``, ``completion``)."""
    from r1flow.data.io import read_jsonl

    return read_jsonl(path / "sft.jsonl", {"prompt": str, "completion": str})


def sampling_engine(ctx: StageContext, artifact: Path, kind: str = "default") -> tuple[str, dict[str, Any] | None]:
    """The engine generating data from the policy saved in ``artifact`` and its arguments: ``kind``
    (a stage's own ``engine`` setting), by ``default`` ``evaluate.engine``; vLLM loads the saved policy."""
    if kind == "default":
        kind = str(ctx.runtime.get("evaluate", {}).get("engine", "torch"))
    return kind, (vllm_engine_kw(ctx, artifact) if kind == "vllm" else None)


def sample_rows(model, tokenizer, problems: list[dict[str, str]], *, template: str, k: int,
                temperature: float, top_p: float, max_new_tokens: int, seed: int,
                batch_size: int = 128, engine: str = "torch", engine_kw: dict[str, Any] | None = None,
                chunk_prompts: int | None = None,
                chunks: ChunkLog | None = None, shard: tuple[int, int] | None = None,
                on_chunk: Callable[[int], None] = lambda done: None) -> list[dict[str, Any]]:
    """k samples per problem as rows ``{question, answer, completion, finish_reason, template}``.

    Problems go in chunks of ``chunk_prompts`` (default: as many as fill a batch), chunk i seeded
    with ``seed + i``; with ``chunks`` each completed chunk is saved and a saved one is reused
    (``r1flow.chunks``); ``shard=(j, N)`` does only the chunks i with i mod N = j (its rows only);
    ``on_chunk(i + 1)`` runs after chunk i (fault injection in tests)."""
    from r1flow.chunks import owned_chunks
    from r1flow.engine import make_engine
    from r1flow.templates import render_prompt, stop_strings

    engine = make_engine(engine, model, tokenizer, batch_size=batch_size, **(engine_kw or {}))
    per_call = chunk_prompts or max(1, batch_size // k)

    def generate(call: int, start: int) -> list[dict[str, Any]]:
        chunk = problems[start:start + per_call]
        out = engine.generate([render_prompt(p["question"], template, tokenizer) for p in chunk], n=k,
                              max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed + call,
                              stop=stop_strings(template))
        return [{"question": chunk[i]["question"], "answer": str(chunk[i]["answer"]), "completion": text,
                 "finish_reason": out.finish_reasons[j], "template": template}
                for j, (i, text) in enumerate(zip(out.prompt_index, out.texts))]

    rows: list[dict[str, Any]] = []
    for call, _, done in owned_chunks(len(problems), per_call, generate, chunks=chunks, shard=shard):
        rows += done
        on_chunk(call + 1)
    return rows


def eval_questions(ctx: StageContext) -> list[str]:
    """Every evaluation question (for decontamination)."""
    from r1flow.data.benchmarks import load_benchmark

    return [row["question"] for bench in ctx.runtime.get("evaluate", {}).get("benchmarks", ["arith_heldout"])
            for row in load_benchmark(bench)]


def write_dataset(ctx: StageContext, rows: list[dict[str, Any]], name: str = "sft.jsonl") -> None:
    from r1flow.data.io import dataset_digest, write_jsonl

    write_jsonl(ctx.workdir / name, rows)
    ctx.set_tags(**{f"r1flow.dataset.{name}": dataset_digest(rows)})
    ctx.tracker.log_dataset(f"{ctx.spec.stage}/{name}", rows, context="output",
                            source=f"{ctx.store.resolve(ctx.spec.output_key)}/{name}")
