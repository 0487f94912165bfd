"""Mid-stage checkpoints: a killed training loop continues exactly where its newest complete
checkpoint left it.

A checkpoint is a store artifact (``r1flow.store``: files, then the manifest last) under
``<prefix>/step-00000012``: model and optimizer state, the scheduler, every RNG state (torch,
Python) and the loop's own ``extra`` state (data position, metric windows, partial outputs).
Because the trainers' data order and sampling seeds are pure functions of (seed, step), that is
all a resumed loop needs to reproduce the uninterrupted run bit for bit on CPU.

- ``latest`` returns the newest checkpoint whose files all match their sha256; a truncated or
  corrupt one is skipped with a warning and the previous one is used.
- ``keep`` bounds how many are kept; the newest complete one is never deleted (pruning runs only
  after a new one is complete).
"""

from __future__ import annotations

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


def checkpoint_prefix(output_key: str) -> str:
    """Where a stage run's checkpoints go: beside its output, under the same cache key
    (``artifacts/<stage>/<key>`` → ``checkpoints/<stage>/<key>``), so a re-run of the same work
    finds them and a changed config does not."""
    return "checkpoints/" + output_key.removeprefix("artifacts/")


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
                 log: Callable[[str], None] = print, meta: dict[str, str] | None = None) -> None:
        if every < 1 or keep < 1:
            raise ValueError(f"checkpoint every={every} and keep={keep} must be >= 1")
        self.store, self.prefix, self.every, self.keep, self.log = store, prefix.strip("/"), every, keep, log
        self.meta = dict(meta or {})  # recorded on every checkpoint, e.g. the MLflow run to re-attach to

    def due(self, step: int, total: int) -> bool:
        """Save after ``step`` (1-based)? Not after the last one: the stage's output follows."""
        return step % self.every == 0 and step < total

    def save(self, step: int, *, model, optimizer, scheduler, extra: dict[str, Any]) -> str:
        with tempfile.TemporaryDirectory(prefix="r1flow-ckpt-") as tmp:
            folder = Path(tmp)
            torch.save(model.state_dict(), folder / "model.pt")
            torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": rng_state(), "extra": extra}, folder / "state.pt")
            ref = self.store.put_dir(folder, f"{self.prefix}/step-{step:08d}", meta={**self.meta, "step": str(step)})
        self._prune()
        return ref.uri

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints (manifest present), newest first."""
        found = []
        for key in self.store.keys(self.prefix):
            match = STEP_DIR.search(key)
            if match and key.rpartition("/")[0] == self.prefix:
                found.append(int(match.group(1)))
        return sorted(found, reverse=True)

    def latest_meta(self) -> dict[str, str] | None:
        """The meta of the newest complete checkpoint (manifest present), without reading it."""
        steps = self.steps()
        try:
            return self.store.manifest(f"{self.prefix}/step-{steps[0]:08d}").meta if steps else None
        except StoreError:  # an unreadable manifest: restore() will skip that checkpoint anyway
            return None

    def restore(self, *, model, optimizer, scheduler) -> Restored | None:
        """Load the newest checkpoint whose files verify; None when there is none."""
        for step in self.steps():
            key = f"{self.prefix}/step-{step:08d}"
            if not self.store.verify(key, deep=True):
                self.log(f"warning: checkpoint {self.store.resolve(key)} is incomplete or corrupt; trying an older one")
                continue
            with tempfile.TemporaryDirectory(prefix="r1flow-ckpt-") as tmp:
                folder = self.store.get_dir(key, tmp)
                model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
                state = torch.load(folder / "state.pt", weights_only=False)  # our own file: RNG tuples
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            self.log(f"resuming from checkpoint {self.store.resolve(key)} (after step {state['step']})")
            return Restored(step=int(state["step"]), extra=state["extra"], uri=self.store.resolve(key))
        return None

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
