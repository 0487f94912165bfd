"""Peak GPU memory per stage, before anything runs: the parts a stage holds at once, for the GPU the
config names (``gpu_memory_gb``). ``r1flow estimate`` prints it beside the GPU-hours and preflight
refuses a config whose plan does not fit, naming the stage, the largest part and what to change.

Per rank, in bytes (N parameters; T tokens per row; e bytes per activation: 2 in bf16 autocast,
4 in fp32; the residual stream and norms stay fp32 under autocast):

- training state: fp32 weights, gradients and AdamW moments, 16·N — over the ranks under FSDP;
- frozen copies: GRPO's reference (β > 0) and a reward model, bf16 whole (``r1flow.precision``);
  a sharded policy's whole fp32 sampling copy (``r1flow.sharding.WholeCopyEngine``);
- activations of one micro-batch: per token and layer 4·4h (residual and norm inputs) plus
  e·(3h + 3q + 3kv + 4I) (the matmul inputs and outputs autograd keeps: q, k, v before and after
  RoPE, attention output, gate, up, SiLU, product); with activation checkpointing only each
  layer's fp32 input per layer, plus one layer's worth being recomputed;
- logits: log-probs and the SFT loss go through the head in chunks of positions
  (``r1flow.grpo.logprobs``), three fp32 copies of a chunk at most;
- KV cache of sampling (rollouts or an evaluation batch): 2·layers·kv·e per token per row — or the
  vLLM engine's share of the GPU (``vllm_memory``).

A stage's peak is the larger of its sampling and training phases. These are plans, checked on CPU
against the allocator's measured peak of real steps (tests/test_memory_plan.py); CUDA adds its
context and fragmentation (a few GB), which ``HEADROOM_GB`` reserves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GB = 1e9
HEADROOM_GB = 3.0  # CUDA context, NCCL buffers, allocator fragmentation
SHAPES: dict[str, dict[str, Any]] = {  # config.json fields of the models the real presets name
    "Qwen/Qwen2.5-Math-1.5B": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                                   num_key_value_heads=2, intermediate_size=8960, vocab_size=151936,
                                   tie_word_embeddings=True, attention_bias=True),
    "Qwen/Qwen2.5-0.5B": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                              intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                              attention_bias=True),
    "Qwen/Qwen2.5-Math-7B": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                                 num_key_value_heads=4, intermediate_size=18944, vocab_size=152064,
                                 tie_word_embeddings=False, attention_bias=True),
    "meta-llama/Llama-3.1-8B": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                    num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                                    tie_word_embeddings=False),
    "Skywork/Skywork-Reward-V2-Qwen3-0.6B": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                                                 num_key_value_heads=8, head_dim=128, intermediate_size=3072,
                                                 vocab_size=151936, tie_word_embeddings=True),
}


@dataclass(frozen=True)
class Shape:
    """What memory depends on in a decoder-only transformer's config."""

    hidden: int
    layers: int
    q_dim: int  # heads × head_dim
    kv_dim: int  # KV heads × head_dim
    intermediate: int
    vocab: int
    tied: bool
    bias: bool = False

    @classmethod
    def of(cls, config: dict[str, Any]) -> Shape:
        """From a ``config.json`` mapping (Qwen2/Qwen3/Llama field names); ``ValueError`` when it
        lacks them (a multimodal or other layout: its plan is unknown)."""
        missing = [k for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                               "vocab_size") if k not in config]
        if missing:
            raise ValueError(f"config.json lacks {', '.join(missing)}")
        h, heads = config["hidden_size"], config["num_attention_heads"]
        head_dim = config.get("head_dim") or h // heads
        return cls(hidden=h, layers=config["num_hidden_layers"], q_dim=heads * head_dim,
                   kv_dim=config.get("num_key_value_heads", heads) * head_dim,
                   intermediate=config["intermediate_size"], vocab=config["vocab_size"],
                   tied=bool(config.get("tie_word_embeddings", False)),
                   bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")))

    @property
    def params(self) -> int:
        h, q, kv = self.hidden, self.q_dim, self.kv_dim
        attention = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.bias else 0)
        layer = attention + 3 * h * self.intermediate + 2 * h
        return self.layers * layer + h + self.vocab * h * (1 if self.tied else 2)

    def activation_bytes(self, tokens: int, e: int, checkpointing: bool) -> float:
        """Autograd's saved activations of ``tokens`` tokens (module doc)."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        layer = 4 * 4 * h + e * (3 * h + 3 * q + 3 * kv + 4 * i)  # per token
        per_token = (self.layers * 4 * h + layer) if checkpointing else self.layers * layer
        return float(tokens * per_token)

    def kv_cache_bytes(self, rows: int, length: int, e: int) -> float:
        return float(rows * length * self.layers * 2 * self.kv_dim * e)


@dataclass(frozen=True)
class StagePlan:
    stage: str
    parts: dict[str, float]  # bytes per part
    phases: dict[str, list[str]]  # phase -> the parts it holds at once

    @property
    def peak(self) -> float:
        return max(sum(self.parts[p] for p in parts) for parts in self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda name: sum(self.parts[p] for p in self.phases[name]))

    def as_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "peak_gpu_memory_gb": round(self.peak / GB, 2), "peak_phase": self.peak_phase,
                "parts_gb": {k: round(v / GB, 2) for k, v in self.parts.items()}}


def shape_of(source: str) -> Shape | None:
    """The shape of a model source: a known hub id, or a local folder's config.json; else None."""
    import json
    from pathlib import Path

    if source in SHAPES:
        return Shape.of(SHAPES[source])
    config = Path(source).expanduser() / "config.json"
    return Shape.of(json.loads(config.read_text())) if config.is_file() else None


def _training(shape: Shape, world: int, sharded: bool) -> float:
    return 16.0 * shape.params / (world if sharded else 1)


def sft_step(shape: Shape, micro: int, length: int, e: int, checkpointing: bool, shards: int = 1) -> dict[str, float]:
    """The parts of one SFT step: training state, a micro-batch's activations and three fp32 copies
    of one loss chunk (``r1flow.train.sft.plain_loss``)."""
    logits = micro * length * shape.vocab * (e + 4.0 + 4.0) if shards > 1 else 3 * 4.0 * _chunk(micro, length,
                                                                                               shape.vocab)
    return {"training state": _training(shape, shards, shards > 1),
            "activations": shape.activation_bytes(micro * length, e, checkpointing),
            "logits": logits}


def grpo_step(shape: Shape, micro: int, prompt: int, new_tokens: int, e: int, checkpointing: bool, *,
              reference: bool, shards: int = 1) -> dict[str, float]:
    """The parts of one GRPO training pass: training state, the frozen reference, a micro-batch's
    activations and three fp32 copies of one log-prob chunk — or, sharded (FSDP keeps the
    full-logits path), the micro-batch's logits with their fp32 copy and gradient."""
    logits = micro * new_tokens * shape.vocab * (e + 4.0 + 4.0) if shards > 1 else \
        3 * 4.0 * _chunk(micro, new_tokens, shape.vocab)
    return {"training state": _training(shape, shards, shards > 1),
            "reference": float(shape.params * e) if reference else 0.0,
            "activations": shape.activation_bytes(micro * (prompt + new_tokens), e, checkpointing),
            "logits": logits}


def _sampling(shape: Shape, rows: int, length: int, e: int, engine: str, vllm_share: float) -> float:
    return vllm_share if engine == "vllm" else shape.kv_cache_bytes(rows, length, e)


def plan(config, shapes: dict[str, Shape], prompt_tokens: int = 150) -> list[StagePlan]:
    """Per stage of ``config`` (a ``PipelineConfig``), its plan; ``shapes``: ``teacher``, ``student``
    and (optional) ``reward_model``. Evaluation batches count in every stage that evaluates."""
    from r1flow.config import RL_STAGES

    e = 2 if config.dtype == "bfloat16" else 4
    gpu = (config.gpu_memory_gb or 0) * GB
    ev = config.evaluate
    eval_rows = max(1, ev.batch_size // 4) * ev.k
    out = []

    def evaluation(shape: Shape) -> float:
        return _sampling(shape, eval_rows, prompt_tokens + ev.max_new_tokens, e, ev.engine, 0.5 * gpu)

    for stage in RL_STAGES:
        rl, shape = config.section(stage), shapes["student" if config.section(stage).model == "student" else "teacher"]
        g, launch = rl.grpo, rl.launch
        world, sharded = launch.processes * launch.machines, launch.strategy == "fsdp"
        length = prompt_tokens + g.max_new_tokens
        parts = {**grpo_step(shape, g.micro_batch_size, prompt_tokens, g.max_new_tokens, e, g.gradient_checkpointing,
                             reference=g.beta > 0 or g.log_kl, shards=world if sharded else 1),
                 "sampling copy": 4.0 * shape.params if sharded else 0.0,
                 "reward model": _reward_model(config, stage, shapes, e),
                 "rollout KV cache": _sampling(shape, g.prompts_per_step * g.group_size, length, e, rl.engine,
                                               rl.vllm_memory * gpu),
                 "evaluation KV cache": evaluation(shape)}
        resident = ["training state", "reference", "sampling copy", "reward model"]
        engine_stays = ["rollout KV cache"] if rl.engine == "vllm" and not rl.vllm_sleep else []
        out.append(StagePlan(stage, parts, {"sampling": resident + ["rollout KV cache"],
                                            "evaluation": resident + engine_stays + ["evaluation KV cache"],
                                            "training": resident + engine_stays + ["activations", "logits"]}))
    for stage, which in (("cold_start", "teacher"), ("sft", "teacher"), ("distill", config.distill.model)):
        section, shape = config.section(stage), shapes[which]
        t, launch = section.train, section.launch
        world, sharded = launch.processes * launch.machines, launch.strategy == "fsdp"
        micro = t.micro_batch_size or max(1, -(-t.batch_size // world))
        parts = {**sft_step(shape, micro, t.max_len, e, t.gradient_checkpointing, world if sharded else 1),
                 "evaluation KV cache": evaluation(shape)}
        out.append(StagePlan(stage, parts, {"training": ["training state", "activations", "logits"],
                                            "evaluation": ["training state", "evaluation KV cache"]}))
    rs = config.rejection_sampling
    shape = shapes["teacher"]
    parts = {"weights": 4.0 * shape.params,
             "sampling KV cache": _sampling(shape, max(1, ev.batch_size // rs.samples_per_prompt) * rs.samples_per_prompt,
                                            prompt_tokens + rs.max_new_tokens, e, rs.engine if rs.engine == "vllm"
                                            else ev.engine, 0.5 * gpu)}
    out.append(StagePlan("rejection_sampling", parts, {"sampling": list(parts)}))
    return out


ADVICE = {
    "training state": "shard it: launch: {processes: N, strategy: fsdp}",
    "activations": "turn on gradient_checkpointing, or lower micro_batch_size or the length",
    "logits": "lower train.micro_batch_size or train.max_len",
    "rollout KV cache": "lower grpo.prompts_per_step × group_size or max_new_tokens, or use engine: vllm",
    "evaluation KV cache": "lower evaluate.batch_size or evaluate.max_new_tokens",
    "sampling KV cache": "lower evaluate.batch_size or rejection_sampling.max_new_tokens",
    "reference": "set grpo.beta: 0 (no reference) or shard the stage",
    "sampling copy": "use more ranks or a smaller model",
    "reward model": "use a smaller reward model",
    "weights": "use a GPU with more memory",
}


def refusal(config, stages: tuple[str, ...]) -> str | None:
    """Why the config's memory plan does not fit ``gpu_memory_gb`` (the first stage that does not),
    or None: it fits, no GPU size is set, the stages run on CPU, or a model's shape is unknown."""
    if not config.gpu_memory_gb or config.device == "cpu":
        return None
    try:
        shapes = model_shapes(config)
    except ValueError:
        return None
    for stage_plan in plan(config, shapes):
        need = stage_plan.peak / GB + HEADROOM_GB
        if stage_plan.stage in stages and need > config.gpu_memory_gb:
            phase = stage_plan.phases[stage_plan.peak_phase]
            part = max(phase, key=lambda p: stage_plan.parts[p])
            return (f"{stage_plan.stage}: its memory plan needs {need:.1f} GB in its {stage_plan.peak_phase} "
                    f"phase (with {HEADROOM_GB:.0f} GB headroom), more than gpu_memory_gb {config.gpu_memory_gb:g}; "
                    f"the largest part is {part} ({stage_plan.parts[part] / GB:.1f} GB): {ADVICE[part]} "
                    f"(r1flow estimate shows every part)")
    return None


def render(plans: list[StagePlan], gpu_memory_gb: float | None) -> str:
    """A markdown table of each stage's peak and its parts."""
    names = [p for p in dict.fromkeys(k for s in plans for k in s.parts)]
    lines = [f"| stage | peak (GB) | phase | {' | '.join(names)} |", "|---" * (len(names) + 3) + "|"]
    for s in plans:
        cells = " | ".join(f"{s.parts[n] / GB:.1f}" if n in s.parts else "" for n in names)
        lines.append(f"| {s.stage} | **{s.peak / GB:.1f}** | {s.peak_phase} | {cells} |")
    fits = f"; the GPU: {gpu_memory_gb:g} GB (gpu_memory_gb)" if gpu_memory_gb else ""
    lines += ["", f"Peak = the largest phase's parts, plus {HEADROOM_GB:.0f} GB headroom in preflight{fits}."]
    return "\n".join(lines) + "\n"


def _reward_model(config, stage: str, shapes: dict[str, Shape], e: int) -> float:
    if stage != "final_rl" or "reward_model" not in shapes:
        return 0.0
    uses = any(r.name == "reward_model" for p in config.final_rl.prompts for r in p.rewards)
    return float(shapes["reward_model"].params * e) if uses else 0.0


def _chunk(rows: int, length: int, vocab: int) -> float:
    """Logit entries of one chunk of ``chunked_logprobs``: at most LOGIT_CHUNK_ELEMENTS, at least a position."""
    from r1flow.grpo.logprobs import LOGIT_CHUNK_ELEMENTS

    return float(min(rows * length * vocab, max(LOGIT_CHUNK_ELEMENTS, rows * vocab)))


def model_shapes(config) -> dict[str, Shape]:
    """The shapes of a config's models that can be known before running (module doc); raises
    ``ValueError`` naming a model whose shape is unknown."""
    from r1flow.modeling import qwen2_config

    shapes = {}
    for role in ("teacher", "student"):
        source = getattr(config.base, role).source
        if source == "build":
            arch = getattr(config.base, f"{role}_arch")
            shapes[role] = Shape.of(qwen2_config(arch, config.base.corpus.vocab_size).to_dict())
        elif (shape := shape_of(source)) is not None:
            shapes[role] = shape
        else:
            raise ValueError(f"base.{role}.source {source!r}: its shape is unknown here (not in "
                             "r1flow.memory_plan.SHAPES and not a local folder)")
    if config.reward_model.source and (shape := shape_of(config.reward_model.source)) is not None:
        shapes["reward_model"] = shape
    return shapes
