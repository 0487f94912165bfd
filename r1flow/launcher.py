"""Run a stage as its own OS process (DESIGN "A stage is a process").

The process gets its own process group, so cancelling the run (or SIGTERM/SIGINT to the
orchestrator) stops the stage and everything it spawned, leaving no orphan. Its stdout is read
line by line: structured events (``r1flow.events``) go to ``on_event``, other lines to
``on_line``. Exit code 2 means a config or input error, 3 a full disk (neither is retried); any
other non-zero code is a crash (retried with resume by the orchestrator).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from r1flow.events import parse

EXIT_INPUT_ERROR = 2
EXIT_DISK_FULL = 3
_LIVE: set[subprocess.Popen] = set()


class StageInputError(RuntimeError):
    """The stage refused its config or inputs; retrying cannot help."""


class StageDiskFull(StageInputError):
    """The stage ran out of disk space; a retry on the same machine would too."""


class StageCrashed(RuntimeError):
    """The stage process died (crash, kill, lost node); a retry resumes it."""


ACCELERATE_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "accelerate"


def stage_command(spec_path: Path, launch: dict | None = None) -> list[str]:
    """The command line that runs one stage: ``python -m r1flow.stages SPEC`` for one process, or
    under ``accelerate launch`` with ``configs/accelerate/<strategy>.yaml`` when the stage's
    ``launch`` asks for several processes or machines. A multi-node stage reads its machine rank
    and rank 0's address from ``R1FLOW_MACHINE_RANK`` / ``R1FLOW_MAIN_PROCESS_IP`` (set per node,
    e.g. from the Kubernetes job's completion index)."""
    launch = launch or {}
    processes, machines = int(launch.get("processes", 1)), int(launch.get("machines", 1))
    stage = ["-m", "r1flow.stages", str(spec_path)]
    if processes * machines == 1:
        return [sys.executable, *stage]
    config = ACCELERATE_CONFIGS / f"{launch.get('strategy', 'ddp')}.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "--num_processes", str(processes * machines), "--num_machines", str(machines),
           "--main_process_port", str(launch.get("main_process_port", 29500))]
    if machines > 1:
        cmd += ["--machine_rank", os.environ.get("R1FLOW_MACHINE_RANK", "0"),
                "--main_process_ip", os.environ.get("R1FLOW_MAIN_PROCESS_IP", "127.0.0.1")]
    return cmd + stage


def run_process(cmd: list[str], *, env: dict[str, str] | None = None,
                on_event: Callable[[dict], None] = lambda e: None,
                on_line: Callable[[str], None] = lambda s: None,
                cwd: str | None = None, on_start: Callable[[subprocess.Popen], None] = lambda p: None) -> int:
    """Run ``cmd`` in a new process group, streaming its output; returns the exit code
    (``on_start(proc)``: who may need to stop it early, e.g. a failed shard's siblings)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
    )
    _LIVE.add(proc)
    on_start(proc)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            event = parse(line)
            if event is not None:
                on_event(event)
            elif line.strip():
                on_line(line)
        return proc.wait()
    finally:
        kill_group(proc)
        _LIVE.discard(proc)


def kill_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``grace_s``."""
    pgid = proc.pid  # started with start_new_session: the group id is the leader's pid
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if not _group_alive(pgid):
            break


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def kill_all() -> None:
    for proc in list(_LIVE):
        kill_group(proc, grace_s=5.0)


def check_exit(code: int, stage: str, last_error: str | None) -> None:
    """Raise the error class that tells the orchestrator whether a retry can help."""
    if code == 0:
        return
    detail = f": {last_error}" if last_error else ""
    if code == EXIT_INPUT_ERROR:
        raise StageInputError(f"stage {stage} refused its config or inputs{detail}")
    if code == EXIT_DISK_FULL:
        raise StageDiskFull(f"stage {stage} ran out of disk space{detail}")
    raise StageCrashed(f"stage {stage} crashed (exit code {code}){detail}")


atexit.register(kill_all)
