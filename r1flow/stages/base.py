"""Stage 0: the base models. CPU presets pretrain a teacher and a smaller student on the
synthetic task (a locally trained tokenizer shared by both); real presets point at a hub id or a
path (``source.json``, weights are not copied). Paper §2.2 starts from DeepSeek-V3-Base."""

from __future__ import annotations

from r1flow.config import BaseConfig
from r1flow.stages.common import evaluate, save_policy, setup_torch
from r1flow.stages.runner import StageContext

Config = BaseConfig


def check(ctx: StageContext) -> None:
    from pathlib import Path

    for role in ("teacher", "student"):
        src = getattr(ctx.config, role).source
        if src != "build" and src.startswith((".", "/", "~")) and not Path(src).expanduser().exists():
            raise FileNotFoundError(f"base.{role}.source: model path does not exist: {src}")


def run(ctx: StageContext) -> None:
    from r1flow.precision import compute_dtype
    from r1flow.train.pretrain import pretrain_base

    cfg: BaseConfig = ctx.config
    setup_torch(ctx)
    builds = any(getattr(cfg, role).source == "build" for role in ("teacher", "student"))
    tokenizer = shared_tokenizer(cfg) if builds else None
    if builds:
        from r1flow.train.pretrain import build_corpus

        ctx.tracker.log_dataset("pretraining_corpus", [{"text": doc} for doc in build_corpus(cfg.corpus)],
                                context="training", source="synthetic arithmetic corpus")
    for role, arch, train in (("teacher", cfg.teacher_arch, cfg.teacher_train),
                              ("student", cfg.student_arch, cfg.student_train)):
        source = getattr(cfg, role)
        if source.source != "build":
            (ctx.workdir / role).mkdir(parents=True)
            ctx.write_json(f"{role}/source.json", source.model_dump())
            continue
        ctx.log(f"pretraining the {role} base ({train.max_steps} steps)")
        tracker = _Prefixed(ctx.tracker, f"{role}/")
        model, tokenizer = pretrain_base(arch, cfg.corpus, train, tokenizer=tokenizer, tracker=tracker,
                                         dtype=compute_dtype(ctx.runtime))
        save_policy(model, tokenizer, ctx, sub=role)
        params = sum(p.numel() for p in model.parameters())
        ctx.tracker.log_metrics({f"{role}/parameters": params}, 0)
        evaluate(ctx, model, tokenizer, "r1_zero", step=train.max_steps,
                 name="eval" if role == "teacher" else "eval_student")


class _Prefixed:
    """Tracker view that prefixes metric names (teacher/ and student/ share one MLflow run)."""

    def __init__(self, inner, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def log_metrics(self, metrics, step):
        self.inner.log_metrics({self.prefix + k: v for k, v in metrics.items()}, step)

    def progress(self, step, total, **info):
        self.inner.progress(step, total, **{**info, "phase": f"{self.prefix}{info.get('phase', '')}"})

    def log_table(self, rows, name):
        self.inner.log_table(rows, self.prefix.strip("/") + "_" + name)


def shared_tokenizer(cfg: BaseConfig):
    """One BPE for teacher, student and reward model, trained on the pretraining corpus and the
    non-reasoning texts (so the final-RL replies tokenize into whole words too)."""
    from r1flow.data.preferences import load_nonreasoning
    from r1flow.modeling import train_tokenizer
    from r1flow.train.pretrain import build_corpus

    general = [f"{r['prompt']} {r['response']}" for r in load_nonreasoning()]
    return train_tokenizer(build_corpus(cfg.corpus) + general, cfg.corpus.vocab_size)
