"""Stage entry points: each module has ``Config`` (its typed config), ``check(ctx)`` (cheap input
validation) and ``run(ctx)`` (the work, writing into ``ctx.workdir``).
Run one with ``python -m r1flow.stages SPEC.json`` (see ``runner``)."""

from __future__ import annotations

import importlib
from types import ModuleType

STAGES = {
    "base": "r1flow.stages.base",
    "r1_zero": "r1flow.stages.rl",
    "cold_start": "r1flow.stages.cold_start",
    "reasoning_rl": "r1flow.stages.rl",
    "rejection_sampling": "r1flow.stages.rejection",
    "sft": "r1flow.stages.sft",
    "reward_model": "r1flow.stages.reward_model",
    "final_rl": "r1flow.stages.rl",
    "distill": "r1flow.stages.sft",
    "evaluation": "r1flow.stages.evaluation",
}


def load_stage(name: str) -> ModuleType:
    try:
        return importlib.import_module(STAGES[name])
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; known: {', '.join(STAGES)}") from None
