"""Grading under a hard per-item deadline, callable from any thread.

Why a pool of processes (paper §2.2.2 rewards are computed for every rollout of every step):
1. A pathological completion can keep sympy busy for seconds or for ever (2,000 nested
   ``\\frac{``: ~7 s to parse here; ``\\boxed{9^{9^{9^{9}}}}``: never returns). A thread cannot
   be stopped and math-verify's ``signal.alarm`` works only on the main thread, so grading runs
   in worker processes and the parent kills a worker that overruns its item's deadline. That
   item scores 0 and is counted; a fresh worker replaces the killed one in the background.
2. Workers are persistent (math-verify and sympy load once) and take one item at a time, so a
   deadline belongs to one item and a kill loses no other work.
3. Workers are fresh interpreters (``python -m r1flow.rewards.worker``) talking over a socket
   pair, not ``multiprocessing`` children: spawn/forkserver would re-import the caller's
   ``__main__`` (a training script that imports torch) in every worker. They start in about
   a second, cap their address space, and exit when the parent goes away (an idle one at
   once, a busy one a few seconds after its item's deadline).
The function graded must be importable by name (a module-level function) and return a number.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import NamedTuple

GradeFn = Callable[[str, str], float]

READY = "ready"  # a worker's first message (r1flow.rewards.worker); never imported from there


class Graded(NamedTuple):
    """Scores of a batch, and how many items did not finish (timed out or crashed: score 0)."""

    scores: list[float]
    n_timeouts: int


class _Worker:
    """One grading interpreter and the item it is working on (index, deadline)."""

    def __init__(self, memory_limit_mb: int | None, preload: Sequence[str]) -> None:
        parent_end, child_end = socket.socketpair()
        fd = child_end.fileno()
        cmd = [sys.executable, "-m", "r1flow.rewards.worker", str(fd), str(memory_limit_mb or 0)]
        cmd += list(preload)
        quiet = subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, pass_fds=(fd,), stdin=quiet, stdout=quiet, env=_child_env())
        child_end.close()
        self.conn = Connection(parent_end.detach())
        self.ready = False
        self.item: int | None = None
        self.deadline = float("inf")

    def start_item(self, fn: GradeFn, index: int, args: tuple[str, str], timeout_s: float) -> None:
        self.conn.send((fn, args, timeout_s))
        self.item, self.deadline = index, time.monotonic() + timeout_s

    def stop(self) -> None:
        self.conn.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _child_env() -> dict[str, str]:
    """The parent's environment, with its import path (workers import r1flow and fn)."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p] + env.get("PYTHONPATH", "").split(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    return env


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()
    workers.clear()


class GradingPool:
    """A few persistent grading processes; ``score`` grades a batch with a per-item deadline.

    Thread-safe: concurrent ``score`` calls take turns. Workers start on first use and import
    the ``preload`` modules before they take an item, so no import time counts against a
    deadline. ``memory_limit_mb`` caps each worker's address space (None: no cap).
    """

    def __init__(
        self,
        workers: int = 2,
        memory_limit_mb: int | None = 4096,
        start_timeout_s: float = 60.0,
        preload: Sequence[str] = ("r1flow.rewards.correctness",),
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.size, self.memory_limit_mb = workers, memory_limit_mb
        self.start_timeout_s, self.preload = start_timeout_s, tuple(preload)
        self.n_restarts = 0
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    def __enter__(self) -> GradingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker (a later ``score`` starts new ones)."""
        with self._lock:
            _stop_all(self._workers)

    def score(
        self, fn: GradeFn, completions: Sequence[str], golds: Sequence[str], timeout_s: float
    ) -> Graded:
        """``fn(completion, gold)`` for every pair; an item that runs past ``timeout_s``
        seconds (or crashes its worker) scores 0 and is counted in ``n_timeouts``."""
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        with self._lock:
            while len(self._workers) < self.size:
                self._workers.append(_Worker(self.memory_limit_mb, self.preload))
            try:
                graded, errors = self._run(fn, list(zip(completions, golds)), timeout_s)
            except BaseException:
                _stop_all(self._workers)  # no worker keeps an item of an abandoned batch
                raise
        if errors:
            raise RuntimeError(f"{fn.__name__} raised in a grading worker: {errors[0]}")
        return graded

    def _run(
        self, fn: GradeFn, items: list[tuple[str, str]], timeout_s: float
    ) -> tuple[Graded, list[str]]:
        scores = [0.0] * len(items)
        todo, n_timeouts, errors = deque(range(len(items))), 0, []
        while todo or any(w.item is not None for w in self._workers):
            now = time.monotonic()
            for worker in self._workers:
                if worker.ready and worker.item is None and todo:
                    index = todo.popleft()
                    try:
                        worker.start_item(fn, index, items[index], timeout_s)
                    except OSError:  # it died while idle: the item waits for another worker
                        todo.appendleft(index)
                        self._replace(worker)
            busy = [w for w in self._workers if w.item is not None]
            waiting = [w for w in self._workers if w.item is not None or not w.ready]
            wait_s = min((w.deadline for w in busy), default=now + self.start_timeout_s) - now
            answered = wait([w.conn for w in waiting], timeout=max(wait_s, 0.0))
            if not answered and not busy:
                raise RuntimeError(f"no grading worker started within {self.start_timeout_s} s")
            for worker in list(self._workers):
                if worker.conn in answered:
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):
                        n_timeouts += self._replace(worker)
                        continue
                    if message == READY:
                        worker.ready = True
                        continue
                    ok, value = message
                    if ok:
                        scores[worker.item] = value
                    else:
                        errors.append(value)
                    worker.item, worker.deadline = None, float("inf")
                elif worker.item is not None and time.monotonic() >= worker.deadline:
                    n_timeouts += self._replace(worker)
        return Graded(scores, n_timeouts), errors

    def _replace(self, worker: _Worker) -> int:
        """Kill ``worker``, start a fresh one in its place; 1 if it held an item, else 0."""
        if not worker.ready:
            code = worker.proc.wait()
            raise RuntimeError(f"a grading worker exited with code {code} before it was ready")
        worker.stop()
        self._workers[self._workers.index(worker)] = _Worker(self.memory_limit_mb, self.preload)
        self.n_restarts += 1
        return int(worker.item is not None)


_default: GradingPool | None = None
_default_lock = threading.Lock()


def default_pool() -> GradingPool:
    """The process-wide pool that rewards use when none is given (started on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = GradingPool()
        return _default


def score_with_timeout(
    fn: GradeFn,
    completions: Sequence[str],
    golds: Sequence[str],
    timeout_s: float,
    pool: GradingPool | None = None,
) -> Graded:
    """Grade every (completion, gold) pair with ``fn`` under a per-item deadline."""
    return (pool or default_pool()).score(fn, completions, golds, timeout_s)
