"""The multi-node follower (``r1flow.multinode``) against a real local store and real processes:
it runs what machine 0 publishes, stops an attempt machine 0 has left behind, ends on the release,
and gives up, naming the job, when machine 0 never speaks. (Two "machines" training together
through it are in ``tests/test_scale_out.py``.)"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from r1flow import multinode
from r1flow.store_local import LocalStore


def follower(store, starts: list[str], seconds: float):
    """``follow`` in a thread; each started "stage process" records its attempt and sleeps."""
    result: dict = {}

    def start(spec_path):
        starts.append(spec_path.read_text())
        return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"], start_new_session=True)

    def run():
        result["code"] = multinode.follow(store, "job-1", start, poll_s=0.1, wait_s=30, log=lambda m: None)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_follower_runs_each_attempt_stops_a_stale_one_and_ends_on_the_release(tmp_path):
    store, starts = LocalStore(tmp_path), []
    thread, result = follower(store, starts, seconds=60)
    multinode.publish_spec(store, "job-1", '{"attempt": 1}')
    wait_until(lambda: len(starts) == 1)
    began = time.monotonic()
    multinode.publish_spec(store, "job-1", '{"attempt": 2}')  # machine 0 retries: the first process must go
    wait_until(lambda: len(starts) == 2)
    multinode.release(store, "job-1")  # machine 0's flow run ended: the second process must go too
    thread.join(timeout=30)
    assert not thread.is_alive() and time.monotonic() - began < 20  # neither 60-second process ran out
    assert starts == ['{"attempt": 1}', '{"attempt": 2}'] and result["code"] != 0  # stopped, not finished


def test_a_follower_reports_a_finished_attempt_and_the_same_spec_is_not_run_twice(tmp_path):
    store, starts = LocalStore(tmp_path), []
    thread, result = follower(store, starts, seconds=0)
    multinode.publish_spec(store, "job-1", '{"attempt": 1}')
    wait_until(lambda: len(starts) == 1)
    time.sleep(0.5)  # several polls with the same spec
    multinode.release(store, "job-1")
    thread.join(timeout=30)
    assert starts == ['{"attempt": 1}'] and result["code"] == 0


def test_a_follower_gives_up_when_machine_0_never_speaks(tmp_path):
    with pytest.raises(TimeoutError, match="multinode job job-1: nothing from machine 0 for 0 s"):
        multinode.follow(LocalStore(tmp_path), "job-1", lambda path: None, poll_s=0.05, wait_s=0.2, log=lambda m: None)


def test_the_follower_entry_names_what_is_missing(monkeypatch, capsys):
    for name in (multinode.JOB_ENV, "R1FLOW_STORE_ROOT", "R1FLOW_MACHINE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert multinode.main() == 2
    assert "set R1FLOW_JOB_ID, R1FLOW_STORE_ROOT, R1FLOW_MACHINE_RANK" in capsys.readouterr().err
