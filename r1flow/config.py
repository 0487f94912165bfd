"""One typed config per stage; defaults live here, YAML presets only override.

``load_config(preset, file, sets)`` layers: code defaults < ``configs/<preset>.yaml`` < ``file``
< ``--set stage.key=value``. Every value is validated before any work starts; an invalid one
fails naming its dotted field (``reasoning_rl.grpo.lr: Input should be greater than 0``).
Each stage section lists in ``cache_exclude`` the fields that do not change its outputs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from r1flow.config_files import ConfigError, rebase
from r1flow.data.curate import CurationParams, RejectionParams
from r1flow.data.sources import SourceSpec
from r1flow.grpo.params import GRPOParams
from r1flow.modeling import ModelArch
from r1flow.train.pretrain import PretrainParams
from r1flow.train.reward_model import RewardModelParams
from r1flow.train.sft import SFTParams

CONFIG_DIRS = [Path(__file__).resolve().parent.parent / "configs", Path.cwd() / "configs"]
RULE_REWARDS = ("accuracy", "format", "language")
STAGES = ("base", "r1_zero", "cold_start", "reasoning_rl", "rejection_sampling", "sft",
          "reward_model", "final_rl", "distill")
RL_STAGES = ("r1_zero", "reasoning_rl", "final_rl")
EVALUATION = "evaluation"  # a stage of its own flow (evaluate one model), not of the pipeline
SHARDABLE = ("rejection_sampling", "evaluation")  # stages whose work splits into shards (launch.shards)
MULTI_PROCESS = ("r1_zero", "cold_start", "reasoning_rl", "final_rl", "sft", "distill")  # trainers: DDP or FSDP


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cache_exclude: ClassVar[set[str]] = set()


_SECRET_KEY = re.compile(r"(secret|password|passwd|token|credential|access_key|api_key|private_key)", re.I)


class Launch(Section):
    """Where a stage runs: ``local`` — its own process on the worker running the pipeline — or
    ``deployment`` — its own flow run of the stage deployment on that deployment's work pool
    (``run_deployment``), e.g. a GPU pool with one worker per GPU host."""

    kind: Literal["local", "deployment"] = Field("local", description="local process or a deployment's pool")
    deployment: str = Field("r1-stage/{stage}", description="'flow/deployment' ({stage} is filled in)")
    job_variables: dict[str, Any] = Field(default_factory=dict,
                                          description="work-pool job variables: image, GPUs, nodes, env")
    timeout_s: float | None = Field(None, gt=0, description="give up waiting for the stage flow run")
    shards: int = Field(1, ge=1, description="generation stages (rejection_sampling, evaluation): split the chunks "
                        "over N runs, then merge — the same dataset for any N")
    processes: int = Field(1, ge=1, description="processes per machine (one per GPU) under `accelerate launch`")
    machines: int = Field(1, ge=1, description="machines of a multi-node stage; each runs with R1FLOW_MACHINE_RANK "
                          "and R1FLOW_MAIN_PROCESS_IP set (the Kubernetes multi-node template does)")
    strategy: Literal["ddp", "fsdp", "zero3"] = Field("ddp", description="configs/accelerate/<strategy>.yaml: 'ddp' "
                                                      "or 'fsdp' (FSDP2: parameters, gradients and optimizer "
                                                      "state sharded over the ranks); 'zero3' is refused")
    main_process_port: int = Field(29500, gt=0, lt=65536, description="rendezvous port of rank 0")

    @model_validator(mode="after")
    def _supported_strategy(self) -> "Launch":
        if self.processes * self.machines > 1 and self.strategy == "zero3":
            raise ValueError("strategy 'zero3': r1flow shards with PyTorch's FSDP2, which partitions parameters, "
                             "gradients and optimizer state as ZeRO-3 does, without DeepSpeed; use 'fsdp'")
        return self

    @field_validator("job_variables")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Job variables travel as Prefect parameters and in run records: never credentials."""
        stack = [value]
        while stack:
            item = stack.pop()
            for k, v in item.items() if isinstance(item, dict) else []:
                if _SECRET_KEY.search(str(k)):
                    raise ValueError(f"{k!r} looks like a credential: give it to the work pool's environment "
                                     "or a Kubernetes secret, not to launch.job_variables")
                stack.append(v)
        return value


class StageSection(Section):
    """A stage's config: what it computes, plus where it runs (``launch``, not in the cache key)."""

    cache_exclude: ClassVar[set[str]] = {"launch"}
    launch: Launch = Field(default_factory=Launch)


class ModelSource(Section):
    """A model to start from: ``build`` (pretrain a tiny one), a hub id, a folder in hub layout or an
    ``s3://`` mirror in hub layout (``r1flow.loading``)."""

    source: str = Field("build", description="'build', a hub id (org/name), a local folder or s3://bucket/prefix")
    revision: str | None = Field(None, description="hub branch, tag or commit (default: main)")
    trust_remote_code: bool = Field(False, description="run the model repo's code (off unless set)")
    resolved: str | None = Field(None, description="pinned by r1flow when the pipeline starts (the hub commit, or "
                                 "a digest of the folder's or mirror's files): part of the cache key; not set by hand")


class BaseConfig(StageSection):
    """Stage 0 (CPU presets): pretrain a teacher and a smaller student base on the synthetic task."""

    teacher: ModelSource = Field(default_factory=ModelSource)
    student: ModelSource = Field(default_factory=ModelSource)
    teacher_arch: ModelArch = Field(default_factory=ModelArch)
    student_arch: ModelArch = Field(default_factory=lambda: ModelArch(
        hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=192))
    corpus: PretrainParams = Field(default_factory=PretrainParams)
    teacher_train: SFTParams = Field(default_factory=lambda: SFTParams(max_steps=700, batch_size=64,
                                                                        lr=3e-3, completion_only_loss=False))
    student_train: SFTParams = Field(default_factory=lambda: SFTParams(max_steps=400, batch_size=64,
                                                                        lr=3e-3, completion_only_loss=False))


class RewardSpec(Section):
    name: str = Field(description="accuracy | format | language | reward_model")
    weight: float = Field(1.0, description="weight in the summed reward")
    params: dict[str, Any] = Field(default_factory=dict, description="factory parameters")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in RULE_REWARDS + ("reward_model",):
            raise ValueError(f"unknown reward {name!r}; known: {', '.join(RULE_REWARDS + ('reward_model',))}")
        return name


class PromptSource(Section):
    """A prompt set for RL, each with its own reward functions (paper §2.3.4)."""

    source: SourceSpec = Field("arith", description="'arith', 'nonreasoning', a problem file ('gsm8k=PATH', "
                               "'math500=PATH', a question/answer JSONL) or a DataSource (hub, S3, columns)")
    num_prompts: int = Field(2000, gt=0, description="prompts drawn from the source")
    weight: float = Field(1.0, gt=0, description="share of each rollout batch")
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="accuracy"),
                                                               RewardSpec(name="format", weight=0.1)])


class Checkpointed(StageSection):
    """A training stage that can checkpoint mid-run and resume (``r1flow.checkpoint``)."""

    cache_exclude: ClassVar[set[str]] = StageSection.cache_exclude | {"checkpoint_every", "keep_checkpoints"}
    checkpoint_every: int = Field(0, ge=0, description="steps between mid-stage checkpoints (0: none)")
    keep_checkpoints: int = Field(2, ge=1, description="newest complete checkpoints kept")


class RLConfig(Checkpointed):
    """A GRPO stage: R1-Zero, reasoning RL (§2.3.2) or all-scenario RL (§2.3.4)."""

    cache_exclude: ClassVar[set[str]] = Checkpointed.cache_exclude | {"eval_every", "vllm_sleep", "vllm_memory"}
    template: Literal["r1_zero", "r1"] = Field("r1", description="prompt template")
    model: Literal["teacher", "student"] = Field("teacher", description="which model of a base artifact to "
                                                 "train (policies holding one model/ ignore it)")
    prompts: list[PromptSource] = Field(default_factory=lambda: [PromptSource()])
    grpo: GRPOParams = Field(default_factory=GRPOParams)
    engine: Literal["torch", "hf", "vllm"] = Field(
        "torch", description="rollout engine: 'torch' (lean KV-cache loop), 'hf' (generate), 'vllm'")
    vllm_sleep: bool = Field(False, description="engine vllm, CUDA only: colocate engine and trainer on one GPU — "
                             "the engine sleeps while the trainer runs and wakes to take weights and sample")
    vllm_memory: float = Field(0.5, gt=0, lt=1, description="engine vllm: share of the GPU's memory it may take")
    eval_every: int = Field(0, ge=0, description="steps between held-out evaluations (0: end only)")


class ColdStartConfig(Checkpointed):
    """Stage 1 (§2.3.1): curate long-CoT examples, then SFT the base on them."""

    sources: list[str] = Field(default_factory=lambda: ["r1_zero"],
                               description="'r1_zero' (sample the R1-Zero model) or JSONL files")
    prompts: SourceSpec = Field("arith", description="problems to sample: 'arith' (synthetic), a problem "
                                "file ('gsm8k=PATH', 'math500=PATH', question/answer JSONL) or a DataSource")
    num_prompts: int = Field(500, gt=0, description="prompts sampled from the R1-Zero model")
    samples_per_prompt: int = Field(4, gt=0, description="samples per prompt from the R1-Zero model")
    temperature: float = Field(0.8, gt=0, description="sampling temperature for those samples")
    max_new_tokens: int = Field(64, gt=0, description="completion length limit")
    curation: CurationParams = Field(default_factory=CurationParams)
    train: SFTParams = Field(default_factory=lambda: SFTParams(epochs=2, lr=5e-4))


class RejectionConfig(StageSection):
    """Stage 3 (§2.3.3): k samples per prompt from the RL checkpoint, keep correct and clean."""

    cache_exclude: ClassVar[set[str]] = StageSection.cache_exclude | {"checkpoint_chunks"}
    prompts: SourceSpec = Field("arith", description="problems to sample: 'arith' (synthetic), a problem "
                                "file ('gsm8k=PATH', 'math500=PATH', question/answer JSONL) or a DataSource")
    num_prompts: int = Field(500, gt=0, description="reasoning prompts")
    engine: Literal["default", "vllm"] = Field("default", description="sampling engine: 'default' (evaluate.engine) "
                                               "or 'vllm' (offline batches from the saved policy)")
    samples_per_prompt: int = Field(4, gt=0, description="k samples per prompt")
    chunk_prompts: int = Field(32, gt=0, description="prompts per chunk; chunk i is seeded seed + i")
    checkpoint_chunks: bool = Field(True, description="save each completed chunk (resume without "
                                    "duplicated or missing samples)")
    temperature: float = Field(0.8, gt=0, description="sampling temperature")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling")
    max_new_tokens: int = Field(64, gt=0, description="completion length limit")
    filters: RejectionParams = Field(default_factory=RejectionParams)
    non_reasoning_fraction: float = Field(0.2, ge=0, lt=1, description="share of non-reasoning rows")
    min_kept: int = Field(1, ge=0, description="fail when fewer samples survive the filters")


class SFTConfig(Checkpointed):
    """Stage 4 (SFT of the base, paper: 2 epochs) and stage 6 (distillation of a student)."""

    model: Literal["teacher", "student"] = Field("teacher", description="which base to train")
    train: SFTParams = Field(default_factory=lambda: SFTParams(epochs=2, lr=5e-4))


class RewardModelConfig(StageSection):
    """The Bradley–Terry reward model scoring general prompts in final RL (§2.3.4): an existing one
    (``source``, used as is), or one trained from scratch (tiny presets) or from the pipeline's base,
    on a preference file or, without one, on synthetic pairs (``r1flow.stages.reward_model``)."""

    source: str | None = Field(None, description="an existing reward model (a one-label "
                               "AutoModelForSequenceClassification): hub id, folder in hub layout or "
                               "s3://bucket/prefix, used as is (nothing is trained)")
    revision: str | None = Field(None, description="source: hub branch, tag or commit (default: main)")
    trust_remote_code: bool = Field(False, description="source: run the model repo's code (off unless set)")
    resolved: str | None = Field(None, description="pinned by r1flow when the pipeline starts (hub commit "
                                 "or content digest); not set by hand")
    init: Literal["scratch", "base"] = Field("scratch", description="train from scratch on 'arch', or from "
                                             "the pipeline's base ('base_model') with a new reward head")
    base_model: Literal["teacher", "student"] = Field("teacher", description="init base: which base model")
    preferences: str | None = Field(None, description="JSONL of prompt/chosen/rejected rows (optional id); "
                                    "None: synthetic pairs. eval_pairs of them are held out, by prompt")
    arch: ModelArch = Field(default_factory=lambda: ModelArch(
        hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128))
    train_pairs: int = Field(2000, gt=0, description="synthetic preference pairs to train on")
    eval_pairs: int = Field(400, gt=0, description="held-out pairs for accuracy")
    train: RewardModelParams = Field(default_factory=RewardModelParams)
    min_accuracy: float = Field(0.8, ge=0, le=1,
                                description="fail the stage below this held-out accuracy")

    @model_validator(mode="after")
    def _coherent(self) -> "RewardModelConfig":
        if self.source is not None and self.init == "base":
            raise ValueError("reward_model.init: 'base' trains a reward model from the base, but "
                             "reward_model.source names one that is used as is; set one of them")
        for name in ("revision", "resolved", "trust_remote_code"):
            if self.source is None and getattr(self, name):
                raise ValueError(f"reward_model.{name} applies to reward_model.source, which is not set")
        return self


class EvalConfig(Section):
    """Paper §3: pass@1 averaged over k samples (T=0.6, top-p 0.95) and cons@k."""

    benchmarks: list[SourceSpec] = Field(default_factory=lambda: ["arith_heldout"], description=(
        "'arith_heldout', 'gsm8k=PATH', 'math500=PATH' or a DataSource (hub, S3, columns)"))
    k: int = Field(4, gt=0, description="samples per problem")
    temperature: float = Field(0.6, ge=0, description="sampling temperature")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling")
    max_new_tokens: int = Field(64, gt=0, description="completion length limit")
    max_problems: int | None = Field(None, gt=0, description="evaluate on the first N problems only")
    batch_size: int = Field(128, gt=0, description="rows per generate call")
    engine: Literal["torch", "hf", "vllm"] = Field("torch", description="sampling engine for evaluation and data "
                                                   "generation; 'vllm' starts from the saved model and is sent "
                                                   "the current weights before each evaluation")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM engines: GPUs one engine spans (tensor parallel); "
                                      "data parallel is launch.shards")
    answer_format: Literal["auto", "r1", "boxed"] = Field(
        "auto", description="where answers are graded: 'r1' after </think>, 'boxed' the completion's last "
        "\\boxed{} (plain chain-of-thought models, as their published pass@1 is graded); 'auto' = the "
        "template's default (r1_zero, r1 -> 'r1'; boxed -> 'boxed')")


class EvaluationConfig(StageSection):
    """The evaluation flow: one model artifact on the ``evaluate`` benchmarks (paper §3)."""

    which: Literal["teacher", "student"] = Field("teacher", description="the base artifact's model to "
                                                 "evaluate (artifacts holding one model/ ignore it)")
    template: Literal["r1_zero", "r1", "boxed", "chat"] | None = Field(
        None, description="prompt template; default: the one the model's own stage evaluated with; "
        "a model given as a hub id, folder or s3:// mirror: 'boxed'. 'boxed': plain chain of thought, graded on "
        "the last \\boxed{}; 'chat': the same through the model's own chat template (instruct, R1-distilled)")


class StoreConfig(Section):
    root: str = Field("", description="'' = $R1FLOW_HOME/store; a path, or s3://bucket/prefix")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto)")


class PromotionConfig(Section):
    """When a registered candidate becomes ``champion``: its held-out metric beats the champion's
    by at least ``margin``, both measured on the same benchmark digest (problems + settings)."""

    benchmark: str = Field("arith_heldout", description="short benchmark name, one of evaluate.benchmarks")
    metric: str = Field("pass_at_1", description="evaluation metric compared (higher is better)")
    margin: float = Field(0.01, ge=0, description="required gain over the champion")


class TrackingConfig(Section):
    experiment: str = Field("r1flow", description="MLflow experiment name")
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    registered_model: str = Field("r1flow-{preset}", description="MLflow registered model of the pipeline's "
                                  "final model ({preset} filled in; students: NAME-student); '' = none")


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preset: str | None = Field(None, description="the preset this config started from")
    seed: int = Field(0, description="global seed")
    threads: int = Field(2, gt=0, description="torch threads per stage process")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="where stages run")
    gpu_memory_gb: float | None = Field(None, gt=0, description="memory of one GPU of the workers: preflight "
                                        "refuses a stage whose memory plan (r1flow estimate) exceeds it")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="compute dtype: bfloat16 = mixed "
                                                  "precision (fp32 weights and optimizer, bf16 matmuls)")
    store: StoreConfig = Field(default_factory=StoreConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    base: BaseConfig = Field(default_factory=BaseConfig)
    r1_zero: RLConfig = Field(default_factory=lambda: RLConfig(template="r1_zero"))
    cold_start: ColdStartConfig = Field(default_factory=ColdStartConfig)
    reasoning_rl: RLConfig = Field(default_factory=lambda: RLConfig(prompts=[PromptSource(rewards=[
        RewardSpec(name="accuracy"), RewardSpec(name="format", weight=0.1),
        RewardSpec(name="language", weight=0.1)])]))
    rejection_sampling: RejectionConfig = Field(default_factory=RejectionConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig)
    final_rl: RLConfig = Field(default_factory=lambda: RLConfig(prompts=[
        PromptSource(num_prompts=1000),
        PromptSource(source="nonreasoning", num_prompts=300, weight=0.5,
                     rewards=[RewardSpec(name="reward_model")])]))
    distill: SFTConfig = Field(default_factory=lambda: SFTConfig(model="student"))
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    def section(self, stage: str) -> Section:
        if stage not in STAGES + (EVALUATION,):
            raise ConfigError(f"unknown stage {stage!r}; known: {', '.join(STAGES + (EVALUATION,))}")
        return getattr(self, stage)

    @model_validator(mode="after")
    def _scale_out_is_coherent(self) -> "PipelineConfig":
        for stage in STAGES + (EVALUATION,):
            launch = self.section(stage).launch
            if launch.shards > 1 and (stage not in SHARDABLE or self.evaluate.tensor_parallel_size > 1):
                raise ValueError(f"{stage}.launch.shards: only these stages split their work into shards: "
                                 f"{', '.join(SHARDABLE)}; a shard takes one GPU (evaluate.tensor_parallel_size 1)")
            if stage not in MULTI_PROCESS and (launch.processes * launch.machines > 1 or launch.strategy == "fsdp"):
                raise ValueError(f"{stage}.launch: only these stages run on several processes, sharded or not: "
                                 f"{', '.join(MULTI_PROCESS)}")
        for stage in RL_STAGES:
            rl = self.section(stage)
            if rl.vllm_sleep and (rl.engine != "vllm" or self.device == "cpu"):
                raise ValueError(f"{stage}.vllm_sleep: sleep/wake is a vLLM feature on CUDA; it needs "
                                 f"{stage}.engine: vllm and device cuda (or auto on a GPU machine)")
            if rl.engine == "vllm" and rl.launch.processes * rl.launch.machines > 1:
                raise ValueError(f"{stage}.engine vllm on several processes is not supported yet: every rank's "
                                 "engine would start on the first GPU; use the torch engine there")
        if self.rejection_sampling.launch.shards > 1 and not self.rejection_sampling.checkpoint_chunks:
            raise ValueError("rejection_sampling.launch.shards > 1 needs checkpoint_chunks: shards hand over "
                             "saved chunks")
        return self

    @staticmethod
    def stage_names() -> tuple[str, ...]:
        return STAGES

    def shared(self) -> dict[str, Any]:
        """Settings every stage sees that change outputs (part of every cache key)."""
        return {"seed": self.seed, "threads": self.threads, "device": self.device, "dtype": self.dtype,
                "evaluate": self.evaluate.model_dump(mode="json")}


def presets() -> list[str]:
    return sorted({p.stem for d in CONFIG_DIRS if d.is_dir() for p in d.glob("*.yaml")})


def _preset_file(name: str) -> Path:
    for d in CONFIG_DIRS:
        if (d / f"{name}.yaml").is_file():
            return d / f"{name}.yaml"
    raise ConfigError(f"unknown preset {name!r}; available: {', '.join(presets()) or 'none'}")


def _preset_data(name: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset's values over those of the preset it names in ``extends`` (one file per variant)."""
    if name in chain:
        raise ConfigError(f"preset {name!r} extends itself: {' -> '.join(chain + (name,))}")
    file = _preset_file(name)
    data = rebase(_read_yaml(file), file, preset=True, rl_stages=RL_STAGES)  # each file's paths next to it
    parent = data.pop("extends", None)
    return merge(_preset_data(parent, chain + (name,)), data) if parent else data


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(data).__name__}")
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_set(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """``a.b.c=value`` (value parsed as YAML) into a nested override."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects stage.key=value, got {assignment!r}")
    dotted, raw = assignment.split("=", 1)
    value: Any = yaml.safe_load(raw) if raw else ""
    for part in reversed(dotted.strip().split(".")):
        value = {part: value}
    return merge(data, value)


def load_config(preset: str | None = "tiny", file: str | Path | None = None,
                sets: list[str] | None = None) -> PipelineConfig:
    """The preset, ``file`` and ``sets`` layered; file paths in a preset or ``file`` are read next
    to that file, those of ``sets`` in the current directory (``_rebase``)."""
    data: dict[str, Any] = {}
    if preset:
        data = merge(_preset_data(preset), {"preset": preset})
    if file:
        data = merge(data, rebase(_read_yaml(Path(file)), Path(file), preset=False, rl_stages=RL_STAGES))
    for assignment in sets or []:
        data = apply_set(data, assignment)
    return validate(data)


def resolve(data: dict[str, Any]) -> PipelineConfig:
    """A config mapping as flows receive it (e.g. deployment parameters ``{preset: tiny, ...}``):
    its preset's file underneath, its own values on top."""
    preset = data.get("preset")
    return validate(merge(_preset_data(preset), data) if preset else data)


def validate(data: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None
