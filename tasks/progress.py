"""Progress of a running stage, where people look: a Prefect progress artifact (the UI) and the
terminal that started the run — a rich progress bar when it is interactive, else a log line
every ``log_every_s`` — each showing the phase (GRPO, SFT, …), step, ETA and the current value
the trainer reports (reward, loss).

The stage process sends ``progress`` events (``r1flow.tracking.EventTracker``); the stage task
feeds them to ``StageProgress.update``. The ETA is the phase's own rate so far (a resumed stage
counts from the step it resumed at).
"""

from __future__ import annotations

import sys
import time
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tasks.artifacts import quietly


def eta_seconds(done: int, remaining: int, elapsed_s: float) -> float | None:
    """Seconds left at the rate so far; None before the first step.

    >>> eta_seconds(done=30, remaining=70, elapsed_s=60.0)  # 2 s per step, 70 steps to go
    140.0
    """
    if remaining <= 0:
        return 0.0
    return None if done <= 0 else elapsed_s / done * remaining


def duration(seconds: float | None) -> str:
    """``3725`` -> ``'1 h 02 min'``, ``80`` -> ``'1 min 20 s'``, ``None`` -> ``'?'``."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def progress_text(phase: str, step: int, total: int, eta_s: float | None, info: dict[str, Any]) -> str:
    """``'GRPO step 30 of 100 · ETA 2 min 20 s · reward 0.42'``."""
    parts = [f"{phase + ' ' if phase else ''}step {step} of {total}", f"ETA {duration(eta_s)}"]
    parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(info.items())]
    return " · ".join(parts)


class StageProgress:
    """One stage's progress: artifact updates at most every ``every_s``, terminal as above."""

    def __init__(self, stage: str, every_s: float = 2.0, log_every_s: float = 30.0) -> None:
        self.stage, self.every_s, self.log_every_s = stage, every_s, log_every_s
        self.id: UUID | None = quietly("progress", create_progress_artifact, progress=0.0,
                                       description=f"stage {stage}: starting")
        self.phase, self.last_step, self.first_step, self.started = None, 0, 0, time.monotonic()
        self.sent = self.logged = 0.0
        self.bar = _TerminalBar(stage) if sys.stderr.isatty() else None

    def update(self, step: int, total: int, phase: str = "", **info: Any) -> None:
        if total <= 0:
            return
        now = time.monotonic()
        if phase != self.phase or step < self.last_step:  # a new phase (or its second run, e.g. the student)
            self.phase, self.first_step, self.started = phase, step, now  # the rate is known from its next event
        self.last_step = step
        text = progress_text(phase, step, total, eta_seconds(step - self.first_step, total - step, now - self.started),
                             info)
        done = step >= total
        if self.bar is not None:
            self.bar.show(phase, step, total, text)
        elif done or now - self.logged >= self.log_every_s:
            self.logged = now
            get_run_logger().info("stage %s: %s", self.stage, text)
        if self.id is not None and (done or now - self.sent >= self.every_s):
            self.sent = now
            quietly("progress", update_progress_artifact, self.id, progress=100.0 * step / total,
                    description=f"stage {self.stage}: {text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _TerminalBar:
    """A rich progress bar on stderr, one task per phase."""

    def __init__(self, stage: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.stage, self.tasks = stage, {}
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[detail]}"), transient=False)
        self.progress.start()

    def show(self, phase: str, step: int, total: int, text: str) -> None:
        detail = text.split(" · ", 2)[2] if text.count(" · ") >= 2 else ""
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(f"{self.stage} {phase}".strip(), total=total, detail=detail)
        self.progress.update(self.tasks[phase], completed=step, total=total, detail=detail)

    def stop(self) -> None:
        self.progress.stop()
