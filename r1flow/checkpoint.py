"""Mid-stage checkpoints: a killed training loop continues exactly where its newest complete
checkpoint left it.

A checkpoint is a store artifact (``r1flow.store``: files, then the manifest last) under
``<prefix>/step-00000012``: model and optimizer state, the scheduler, every RNG state (torch,
Python) and the loop's own ``extra`` state (data position, metric windows, partial outputs).
Because the trainers' data order and sampling seeds are pure functions of (seed, step), that is
all a resumed loop needs to reproduce the uninterrupted run bit for bit on CPU.

- ``restore`` loads the newest checkpoint whose files all match their sha256; a truncated or
  corrupt one is skipped with a warning and the previous one is used.
- Metrics logged up to the checkpoint but not yet delivered to MLflow (a server outage, the
  sender's queue) are saved with it and re-sent on restore: a kill loses no metric history.
- ``keep`` bounds how many are kept; the newest complete one is never deleted (pruning runs only
  after a new one is complete).
- ``warm_start`` names the checkpoints of an earlier attempt keyed on another config (resumed with
  ``--allow-config-change``): used only when this attempt has none of its own. Weights, optimizer
  moments, step, RNG and loop state come from it; the optimizer's hyperparameters and the
  schedule's base learning rates stay the new config's, so a changed lr takes effect.
"""

from __future__ import annotations

import json
import random
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from r1flow.store import Store, StoreError

STEP_DIR = re.compile(r"step-(\d{8})$")
PENDING_METRICS = "metrics_pending.json"
CHECKPOINT_METRIC_WAIT_S = 2.0  # at a checkpoint, wait this long for queued metrics; the rest is saved with it


def checkpoint_prefix(output_key: str) -> str:
    """Where a stage run's checkpoints go: beside its output, under the same cache key
    (``artifacts/<stage>/<key>`` → ``checkpoints/<stage>/<key>``), so a re-run of the same work
    finds them and a changed config does not."""
    return "checkpoints/" + output_key.removeprefix("artifacts/")


def newest_saved(store: Store, prefix: str) -> tuple[str, dict[str, str]] | None:
    """The newest complete thing saved under a stage attempt's prefix — a training checkpoint or
    a generation chunk (``r1flow.chunks``) — as ``(key, manifest meta)``; meta names the MLflow run."""
    saved = store.keys(prefix)
    if not saved:
        return None
    try:
        return max(saved), store.manifest(max(saved)).meta
    except StoreError:  # unreadable: the restore path will skip it with a warning
        return max(saved), {}


def clear_saved(store: Store, prefix: str) -> int:
    """Delete every checkpoint and chunk under ``prefix`` (a stage started afresh); returns how many."""
    saved = store.keys(prefix)
    for key in saved:
        store.delete(key)
    return len(saved)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


@dataclass
class Restored:
    """What ``Checkpointer.restore`` gives back: the step to continue after, and the loop's state."""

    step: int
    extra: dict[str, Any]
    uri: str


class Checkpointer:
    """Saves every ``every`` steps into ``store`` under ``prefix``; restores the newest good one."""

    def __init__(self, store: Store, prefix: str, *, every: int, keep: int = 2,
                 log: Callable[[str], None] = print, meta: dict[str, str] | None = None,
                 warm_start: str | None = None, tracker: Any = None) -> None:
        if every < 1 or keep < 1:
            raise ValueError(f"checkpoint every={every} and keep={keep} must be >= 1")
        self.store, self.prefix, self.every, self.keep, self.log = store, prefix.strip("/"), every, keep, log
        self.meta = dict(meta or {})  # recorded on every checkpoint, e.g. the MLflow run to re-attach to
        self.warm_start = warm_start.strip("/") if warm_start else None
        self.tracker = tracker  # metrics still queued for MLflow travel with the checkpoint

    def due(self, step: int, total: int) -> bool:
        """Save after ``step`` (1-based)? Not after the last one: the stage's output follows."""
        return step % self.every == 0 and step < total

    def save(self, step: int, *, model, optimizer, scheduler, extra: dict[str, Any]) -> str:
        """Save a checkpoint. Every rank calls it: a sharded model is gathered from all of them, and
        rank 0 alone writes (the others get "")."""
        from r1flow.diskspace import disk_writes, ensure_free, tensor_bytes
        from r1flow.ranks import rank_world
        from r1flow.sharding import full_state, is_sharded

        sharded, writes = is_sharded(model), rank_world()[0] == 0
        if not (sharded or writes):
            return ""
        model_state, optim_state = (full_state(model, optimizer) if sharded
                                    else (model.state_dict(), optimizer.state_dict()))
        if not writes:
            return ""
        with tempfile.TemporaryDirectory(prefix="r1flow-ckpt-") as tmp:
            folder = Path(tmp)
            ensure_free(folder, tensor_bytes(model_state, optim_state), f"checkpoint {step}")
            with disk_writes(f"checkpoint {step}", folder):
                torch.save(model_state, folder / "model.pt")
                torch.save({"step": step, "optimizer": optim_state, "scheduler": scheduler.state_dict(),
                            "rng": rng_state(), "extra": extra}, folder / "state.pt")
                pending = self.tracker.flush(CHECKPOINT_METRIC_WAIT_S) if self.tracker is not None else []
                (folder / PENDING_METRICS).write_text(json.dumps(pending))
            ref = self.store.put_dir(folder, f"{self.prefix}/step-{step:08d}", meta={**self.meta, "step": str(step)})
        self._prune()
        return ref.uri

    def steps(self, prefix: str | None = None) -> list[int]:
        """Steps of the complete checkpoints (manifest present) under ``prefix`` (default: this
        attempt's), newest first."""
        prefix = prefix or self.prefix
        found = []
        for key in self.store.keys(prefix):
            match = STEP_DIR.search(key)
            if match and key.rpartition("/")[0] == prefix:
                found.append(int(match.group(1)))
        return sorted(found, reverse=True)

    def restore(self, *, model, optimizer, scheduler) -> Restored | None:
        """Load the newest checkpoint whose files verify (this attempt's first, then the warm
        start's); None when there is none. Several ranks load the one rank 0 found."""
        from r1flow.ranks import from_rank_zero, rank_world

        key, adopt = from_rank_zero(self._newest_good() if rank_world()[0] == 0 else None)
        return None if key is None else self._load(key, model, optimizer, scheduler, keep_hyperparameters=adopt)

    def _newest_good(self) -> tuple[str | None, bool]:
        """(key, from the warm start?) of the newest checkpoint whose files verify."""
        for prefix in filter(None, (self.prefix, self.warm_start)):
            for step in self.steps(prefix):
                key = f"{prefix}/step-{step:08d}"
                if self.store.verify(key, deep=True):
                    return key, prefix != self.prefix
                self.log(f"warning: checkpoint {self.store.resolve(key)} is incomplete or corrupt; "
                         "trying an older one")
        return None, False

    def _load(self, key: str, model, optimizer, scheduler, *, keep_hyperparameters: bool) -> Restored:
        from r1flow.sharding import is_sharded, load_full_state

        groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        base_lrs = list(getattr(scheduler, "base_lrs", []))
        with tempfile.TemporaryDirectory(prefix="r1flow-ckpt-") as tmp:
            folder = self.store.get_dir(key, tmp)
            model_state = torch.load(folder / "model.pt", weights_only=True)
            state = torch.load(folder / "state.pt", weights_only=False)  # our own file: RNG tuples
            pending = folder / PENDING_METRICS
            if pending.exists() and self.tracker is not None:  # logged before the crash, never delivered
                self.tracker.requeue(json.loads(pending.read_text()))
        if is_sharded(model):  # every rank reads the whole state and keeps its shard
            load_full_state(model, model_state, optimizer, state["optimizer"])
        else:
            model.load_state_dict(model_state)
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if keep_hyperparameters:  # warm start under a changed config: its hyperparameters win
            for group, new in zip(optimizer.param_groups, groups):
                group.update(new)
            if base_lrs:
                scheduler.base_lrs = base_lrs
                for group, lr in zip(optimizer.param_groups, _scheduled_lrs(scheduler)):
                    group["lr"] = lr
        set_rng_state(state["rng"])
        how = "warm start (config changed) from" if keep_hyperparameters else "resuming from"
        self.log(f"{how} checkpoint {self.store.resolve(key)} (after step {state['step']})")
        return Restored(step=int(state["step"]), extra=state["extra"], uri=self.store.resolve(key))

    def _prune(self) -> None:
        """Keep the newest ``keep`` complete checkpoints (only verified ones count towards it)."""
        kept = 0
        for step in self.steps():
            key = f"{self.prefix}/step-{step:08d}"
            if kept < self.keep and self.store.verify(key):
                kept += 1
                continue
            if kept >= self.keep:
                self.store.delete(key)


def _scheduled_lrs(scheduler) -> list[float]:
    """The learning rates a LambdaLR-style schedule gives at its current step."""
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is None:
        return list(scheduler.base_lrs)
    return [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, lambdas)]
