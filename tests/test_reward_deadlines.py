"""Grading under deadlines (paper §2.2.2's rule rewards at scale): pathological completions time
out and are counted, a stuck worker never outlives its parent, a crashed worker is replaced, and
nothing relies on signal-based timeouts (which fail off the main thread, where Prefect runs tasks).
Split from ``test_rewards.py``, which checks what the rewards compute."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from math_verify import parse

from r1flow.rewards import (
    AccuracyReward,
    GradingPool,
    accuracy,
    score_with_timeout,
    worker,
)
from r1flow.templates import r1_completion

NESTED_FRAC = "\\boxed{" + "\\frac{1}{" * 2000 + "2" + "}" * 2000 + "}"  # ~7 s to parse here
POWER_TOWER = "\\boxed{9^{9^{9^{9}}}}"  # sympy never returns from verify
HUGE_NUMBER = "9" * 10_000


@pytest.mark.timeout(60)  # a broken deadline would hang on the power tower for ever
def test_pathological_completions_time_out_and_are_counted(pool):
    normal = [r1_completion("ok", "\\frac{14}{3}"), r1_completion("ok", "7")]
    bad = [r1_completion("x", NESTED_FRAC[len("\\boxed{"):-1]), f" x </think> {POWER_TOWER}",
           f" x </think> {HUGE_NUMBER}"]
    completions = [normal[0], bad[0], bad[1], normal[1], bad[2]]
    golds = ["\\frac{14}{3}", "5", "5", "7", "5"]
    reward = AccuracyReward(timeout_s=1.0, pool=pool)
    restarts = pool.n_restarts
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as executor:  # deadlines hold off the main thread
        scores = executor.submit(reward, completions, golds).result()
    elapsed = time.monotonic() - start
    assert scores == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert scores.n_timeouts == 2  # the 10,000-digit number fails fast, it does not hang
    assert pool.n_restarts == restarts + 2
    assert elapsed < 8.0, elapsed
    again = reward([normal[0], bad[1]], ["\\frac{14}{3}", "5"])  # replaced workers still grade
    assert again == [1.0, 0.0] and again.n_timeouts == 1 and reward.total_timeouts == 3


ORPHAN_SCRIPT = """
import os, threading, time
from r1flow.rewards import GradingPool, accuracy
pool = GradingPool(workers=1)
pool.score(accuracy, [" 1 </think> 1"], ["1"], 10.0)
print(pool._workers[0].proc.pid, flush=True)
threading.Thread(target=pool.score, args=(accuracy, [" </think> %s"], ["5"], 1.0)).start()
time.sleep(0.5)
os._exit(0)  # the parent dies while its worker is stuck on the power tower
""" % POWER_TOWER.replace("\\", "\\\\")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.timeout(60)
def test_a_stuck_worker_does_not_outlive_its_dead_parent():
    out = subprocess.run([sys.executable, "-c", ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True,
                         stderr=subprocess.DEVNULL, timeout=30,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 1.0 + worker.GRACE_S + 3.0  # item timeout + grace + slack
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid)


def _grade_or_die(completion: str, gold: str) -> float:
    """A grading function whose worker dies on "die" and raises on "raise"."""
    if completion == "die":
        os._exit(3)
    if completion == "raise":
        raise ArithmeticError("bad gold")
    return float(completion == gold)


@pytest.mark.timeout(60)
def test_pool_counts_a_crashed_worker_and_reports_errors():
    with GradingPool(workers=1, preload=[__name__]) as own_pool:
        graded = own_pool.score(_grade_or_die, ["a", "die", "b"], ["a", "x", "c"], timeout_s=10)
        assert graded == ([1.0, 0.0, 0.0], 1)
        with pytest.raises(RuntimeError, match="ArithmeticError: bad gold"):
            own_pool.score(_grade_or_die, ["raise"], ["x"], timeout_s=10)
        own_pool._workers[0].proc.kill()  # a worker that dies while idle is replaced
        own_pool._workers[0].proc.wait()
        scores, n_timeouts = score_with_timeout(_grade_or_die, ["q"], ["q"], 10, pool=own_pool)
        assert (scores, n_timeouts) == ([1.0], 0)
    with pytest.raises(ValueError, match="2 completions but 1 golds"):
        GradingPool().score(_grade_or_die, ["a", "b"], ["a"], timeout_s=1)


def test_no_signal_timeout_used():
    """math-verify's own timeout (signal.alarm) would raise here, off the main thread."""
    outcome: list[float] = []
    completion = " 3 </think> \\boxed{\\pi}"
    thread = threading.Thread(target=lambda: outcome.append(accuracy(completion, "\\pi")))
    thread.start()
    thread.join()
    assert outcome == [1.0]
    with ThreadPoolExecutor(max_workers=1) as executor:
        with pytest.raises(ValueError, match="signal"):
            executor.submit(parse, "$\\pi$").result()
