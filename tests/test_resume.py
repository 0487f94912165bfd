"""Mid-stage resume: a GRPO run SIGKILLed between checkpoints and resumed ends with the same
weights (bit for bit on CPU) and the same metric history as an uninterrupted run; a corrupt
newest checkpoint falls back to the previous one; pruning keeps the newest complete ones."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1flow.checkpoint import Checkpointer
from r1flow.modeling import ModelArch, build_model, save_model, train_tokenizer
from r1flow.store_local import LocalStore

SCRIPT = Path(__file__).with_name("resume_run.py")
ARCH = ModelArch(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tok = train_tokenizer(["a b c d e f g 1 2 3 + = q <think> </think> bb"] * 20, 280)
    return tok, build_model(ARCH, tok, seed=0)


def run(kind: str, work: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent.parent), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), kind, str(work), str(out), *extra], env=env,
                          capture_output=True, text=True, timeout=300)


def last_values(path: Path) -> dict[tuple[str, int], float]:
    """The last value logged per (metric, step) — what MLflow shows after a resume — without the
    wall-clock ones."""
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        for key, value in row["metrics"].items():
            if not key.startswith("time/") and key not in ("step_time_s", "tokens_per_s"):
                out[(key, row["step"])] = value
    return out


@pytest.mark.parametrize("kind", ["grpo", "sft"])
def test_sigkilled_run_resumes_to_the_same_weights_and_metrics(tiny, tmp_path, kind):
    """GRPO with β > 0 (the reference stays the starting policy), μ = 2 and 2 minibatches; SFT
    with a cosine schedule: killed after step 5, resumed from the checkpoint after step 4."""
    tok, model = tiny
    for name in ("straight", "crashed"):
        save_model(model, tok, tmp_path / name / "model")
    straight = run(kind, tmp_path / "straight", tmp_path / "straight" / "out")
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = run(kind, tmp_path / "crashed", tmp_path / "crashed" / "out", "--kill-at", "5")
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "crashed" / "out" / "final.pt").exists()
    ckpt = Checkpointer(LocalStore(tmp_path / "crashed" / "store"), f"checkpoints/{kind}", every=2, keep=2)
    assert ckpt.steps() == [4, 2]  # saved after steps 2 and 4; killed after 5
    resumed = run(kind, tmp_path / "crashed", tmp_path / "crashed" / "out")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint" in resumed.stdout

    a = torch.load(tmp_path / "straight" / "out" / "final.pt")
    b = torch.load(tmp_path / "crashed" / "out" / "final.pt")
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    assert max((a[k] - model.state_dict()[k]).abs().max().item() for k in a) > 1e-3  # it trained
    history = last_values(tmp_path / "straight" / "out" / "metrics.jsonl")
    assert {step for _, step in history} == {2, 4, 6, 7}
    assert last_values(tmp_path / "crashed" / "out" / "metrics.jsonl") == history


def test_corrupt_newest_checkpoint_falls_back_and_pruning_keeps_the_newest(tiny, tmp_path):
    tok, model = tiny
    warnings: list[str] = []
    store = LocalStore(tmp_path / "store")
    ckpt = Checkpointer(store, "ck", every=1, keep=2, log=warnings.append)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    for step in (1, 2, 3):
        ckpt.save(step, model=model, optimizer=optimizer, scheduler=scheduler, extra={"position": step})
    assert ckpt.steps() == [3, 2]  # keep=2: step 1 pruned
    newest = tmp_path / "store" / "ck" / "step-00000003" / "model.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    restored = ckpt.restore(model=model, optimizer=optimizer, scheduler=scheduler)
    assert restored.step == 2 and restored.extra == {"position": 2}
    assert "step-00000003" in warnings[0] and "corrupt" in warnings[0]
    assert "resuming from" in warnings[1] and "step-00000002" in warnings[1]
    shutil.rmtree(tmp_path / "store" / "ck")
    assert ckpt.restore(model=model, optimizer=optimizer, scheduler=scheduler) is None
