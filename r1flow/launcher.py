"""Run a stage as its own OS process (DESIGN "A stage is a process").

The process gets its own process group, so cancelling the run (or SIGTERM/SIGINT to the
orchestrator) stops the stage and everything it spawned, leaving no orphan. Its stdout is read
line by line: structured events (``r1flow.events``) go to ``on_event``, other lines to
``on_line``. Exit code 2 means a config or input error, 3 a full disk, 4 an exception raised by the
stage's own code (none of them is retried: the same inputs fail the same way); any other non-zero
code — a signal, a lost peer, a transient I/O error — is a crash, retried with resume by the
orchestrator. Under ``accelerate launch`` the launcher exits 1 whatever its ranks did, so the
``error`` event a rank emitted (its ``kind``) decides, not the exit code.
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
EXIT_STAGE_ERROR = 4
_LIVE: set[subprocess.Popen] = set()


class StageInputError(RuntimeError):
    """The stage refused its config or inputs; retrying cannot help."""


class StageDiskFull(StageInputError):
    """The stage ran out of disk space; a retry on the same machine would too."""


class StageFailed(RuntimeError):
    """The stage's own code raised (a bug, a model or tokenizer that cannot load): deterministic,
    so not retried — on a GPU worker each retry would reload the model only to fail again."""


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


ERROR_KINDS = ("input", "disk", "exception", "crash")
"""``kind`` of a stage's ``error`` events, the verdict first: when ranks report several (one raised,
the others then lost their peer), the first of these wins."""


def worst_error(kinds: set[str]) -> str | None:
    """The kind of error that decides the retry, of those a stage's ranks reported."""
    return next((kind for kind in ERROR_KINDS if kind in kinds), None)


def check_exit(code: int, stage: str, last_error: str | None, kind: str | None = None) -> None:
    """Raise the error class that tells the orchestrator whether a retry can help: the exit code,
    or the ``kind`` of error the stage reported (what survives ``accelerate launch``)."""
    if code == 0:
        return
    detail = f": {last_error}" if last_error else ""
    if code == EXIT_INPUT_ERROR or kind == "input":
        raise StageInputError(f"stage {stage} refused its config or inputs{detail}")
    if code == EXIT_DISK_FULL or kind == "disk":
        raise StageDiskFull(f"stage {stage} ran out of disk space{detail}")
    if code == EXIT_STAGE_ERROR or kind == "exception":
        raise StageFailed(f"stage {stage} failed{detail} — an error of its code, config or model files, "
                          "not retried (the same inputs fail the same way)")
    raise StageCrashed(f"stage {stage} crashed (exit code {code}){detail}")


def timeout_for(hours: float | None, default_s: float) -> float:
    """Seconds to allow work estimated at ``hours`` (``r1flow.estimate``): twice the estimate — it
    assumes a sustained utilisation real runs miss — plus an hour for start-up, loading and
    checkpoints, which is also the floor of a stage estimated at minutes; ``default_s`` without
    an estimate."""
    return default_s if hours is None else 2.0 * hours * 3600.0 + 3600.0


atexit.register(kill_all)
