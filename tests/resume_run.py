"""A small GRPO or SFT run with checkpoints, for test_resume (run as its own process so it can
be SIGKILLed for real):

    python tests/resume_run.py grpo|sft WORK OUT [--kill-at STEP]

WORK holds ``model/`` (the starting policy) and ``store/`` (where checkpoints go); OUT gets
``metrics.jsonl`` (appended at every log call, so a killed run keeps what it logged) and, when the
run completes, ``final.pt`` (the trained weights).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

from r1flow.checkpoint import Checkpointer
from r1flow.grpo.params import GRPOParams
from r1flow.grpo.rewarding import completion_reward
from r1flow.grpo.trainer import train_grpo
from r1flow.modeling import load_model
from r1flow.store_local import LocalStore
from r1flow.tracking import NullTracker
from r1flow.train.sft import SFTParams, train_sft

PROMPTS = [{"prompt": f"q {i} {'b' * (i % 3)} =", "gold": str(i), "source": "toy"} for i in range(12)]
SFT_EXAMPLES = [{"prompt": f"q {i} =", "completion": f" <think> {'a ' * (i % 4)}</think> {i}"} for i in range(20)]
SFT_PARAMS = SFTParams(max_steps=7, batch_size=4, lr=1e-2, log_every=2, seed=3)
PARAMS = GRPOParams(steps=7, prompts_per_step=2, group_size=4, max_new_tokens=6, lr=1e-2, beta=0.05,
                    mu=2, num_minibatches=2, micro_batch_size=3, log_every=2, seed=3)


def frac_a(completions: list[str], golds: list[str]) -> list[float]:
    return [c.count("a") / max(len(c), 1) for c in completions]


class FileTracker(NullTracker):
    def __init__(self, path: Path) -> None:
        self.path = path

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "metrics": metrics}) + "\n")


def main(kind: str, work: Path, out: Path, kill_at: int | None) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(str(work / "model"))
    ckpt = Checkpointer(LocalStore(work / "store"), f"checkpoints/{kind}", every=2, keep=2)
    tracker = FileTracker(out / "metrics.jsonl")

    def on_step(*args):
        step = args[0] if kind == "grpo" else args[0].step
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    if kind == "grpo":
        train_grpo(model, tok, PROMPTS, [("a", 1.0, completion_reward(frac_a))], PARAMS, tracker,
                   on_step=on_step, checkpoints=ckpt)
    else:
        train_sft(model, tok, SFT_EXAMPLES, SFT_PARAMS, tracker, on_step=on_step, checkpoints=ckpt)
    torch.save(model.state_dict(), out / "final.pt")


if __name__ == "__main__":
    kill = int(sys.argv[sys.argv.index("--kill-at") + 1]) if "--kill-at" in sys.argv else None
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), kill)
