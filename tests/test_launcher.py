"""Stage processes: events are parsed, exit codes classified, and a cancelled stage leaves no orphan."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from r1flow.launcher import (
    EXIT_INPUT_ERROR,
    EXIT_STAGE_ERROR,
    StageCrashed,
    StageDiskFull,
    StageFailed,
    StageInputError,
    check_exit,
    kill_all,
    run_process,
    worst_error,
)

CHILD = """
import os, subprocess, sys, time
from r1flow.events import emit
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
emit("log", message="started", grandchild=grandchild.pid)
print("plain line")
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_events_and_plain_lines_are_separated():
    events, lines = [], []
    code = run_process([sys.executable, "-c",
                        "from r1flow.events import emit; emit('metrics', step=1, values={'loss': 1.0}); print('x')"],
                       on_event=events.append, on_line=lines.append)
    assert code == 0
    assert events == [{"event": "metrics", "step": 1, "values": {"loss": 1.0}}] and lines == ["x"]


def test_exit_codes_tell_input_errors_from_crashes():
    check_exit(0, "sft", None)
    with pytest.raises(StageInputError, match="refused"):
        check_exit(EXIT_INPUT_ERROR, "sft", "bad row")
    with pytest.raises(StageCrashed, match="exit code -9"):
        check_exit(-9, "sft", None)
    with pytest.raises(StageFailed, match="ValueError: bad tokenizer.*not retried"):
        check_exit(EXIT_STAGE_ERROR, "sft", "ValueError: bad tokenizer")


def test_under_accelerate_the_reported_error_kind_decides():
    """``accelerate launch`` exits 1 whatever its ranks did: the error events tell what happened.
    One rank raising and the others then losing it is the raise; a killed rank is a crash."""
    assert worst_error({"crash", "exception"}) == "exception" and worst_error(set()) is None
    with pytest.raises(StageFailed):
        check_exit(1, "sft", "ValueError: x", worst_error({"crash", "exception"}))
    with pytest.raises(StageInputError):
        check_exit(1, "sft", "bad row", "input")
    with pytest.raises(StageDiskFull):
        check_exit(1, "sft", "no space", "disk")
    with pytest.raises(StageCrashed):
        check_exit(1, "sft", "RuntimeError: Connection closed by peer", "crash")
    with pytest.raises(StageCrashed):
        check_exit(1, "sft", None, None)  # a rank SIGKILLed reports nothing


def test_cancelling_kills_the_whole_process_group():
    events = []
    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "code", run_process([sys.executable, "-c", CHILD], on_event=events.append)))
    t.start()
    deadline = time.time() + 30
    while not events and time.time() < deadline:
        time.sleep(0.1)
    assert events, "the child never reported"
    grandchild = events[0]["grandchild"]
    assert _alive(grandchild)
    kill_all()  # what SIGTERM to the orchestrator does
    t.join(timeout=30)
    assert not t.is_alive()
    deadline = time.time() + 10
    while _alive(grandchild) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild), "grandchild orphaned"


def test_stage_command_picks_accelerate_for_several_processes_or_machines(monkeypatch, tmp_path):
    from r1flow.launcher import ACCELERATE_CONFIGS, stage_command

    spec = tmp_path / "spec.json"
    assert stage_command(spec)[1:] == ["-m", "r1flow.stages", str(spec)]
    assert stage_command(spec, {"processes": 1, "machines": 1})[1:] == ["-m", "r1flow.stages", str(spec)]
    two = stage_command(spec, {"processes": 2, "strategy": "ddp", "main_process_port": 29612})
    assert two[1:3] == ["-m", "accelerate.commands.launch"] and two[-3:] == ["-m", "r1flow.stages", str(spec)]
    assert two[two.index("--config_file") + 1] == str(ACCELERATE_CONFIGS / "ddp.yaml")
    assert (two[two.index("--num_processes") + 1], two[two.index("--main_process_port") + 1]) == ("2", "29612")
    assert "--machine_rank" not in two
    monkeypatch.setenv("R1FLOW_MACHINE_RANK", "3")
    monkeypatch.setenv("R1FLOW_MAIN_PROCESS_IP", "10.0.0.7")
    nodes = stage_command(spec, {"processes": 8, "machines": 4})
    assert [nodes[nodes.index(f) + 1] for f in ("--num_processes", "--num_machines", "--machine_rank",
                                                "--main_process_ip")] == ["32", "4", "3", "10.0.0.7"]
    for strategy in ("ddp", "fsdp", "zero3"):
        assert (ACCELERATE_CONFIGS / f"{strategy}.yaml").is_file()
