"""A stage on several machines (``launch.machines`` = M > 1): how machines 1..M-1 join it.

Only machine 0 runs the Prefect flow run. It launches the stage under ``accelerate launch
--machine_rank 0`` and hands the other machines the stage's spec through the shared store, under
``multinode/<job id>/`` — the job id (``R1FLOW_JOB_ID``) is what every machine of the job shares:
the Kubernetes job's name in ``deployments/work-pools/kubernetes-gpu-multinode.json``. A follower
(``python -m r1flow.multinode``, the entry of pods 1..M-1) waits for a spec, runs the same command
as machine ``R1FLOW_MACHINE_RANK`` (accelerate's rendezvous at ``R1FLOW_MAIN_PROCESS_IP`` makes the
ranks meet), then waits again — machine 0 may retry a crashed stage with a fresh spec — until
machine 0's flow run ends and releases the job; a process of an attempt machine 0 has left behind
is stopped. So no follower ever talks to Prefect, and a follower never outlives its flow run (or
``R1FLOW_FOLLOW_WAIT_S`` without news of it; a pod 0 that dies fails the Kubernetes Job, which
stops the other pods).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from r1flow.store import Store, open_store

SPEC, RELEASED = "spec", "released"
JOB_ENV = "R1FLOW_JOB_ID"


def job_id() -> str | None:
    return os.environ.get(JOB_ENV) or None


def _key(job: str, what: str) -> str:
    return f"multinode/{job}/{what}"


def _put(store: Store, key: str, files: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="r1flow-multinode-") as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        store.put_dir(tmp, key)


def publish_spec(store: Store, job: str, spec_json: str) -> None:
    """Machine 0, before it launches: the spec the followers run (a fresh attempt id each time, so a
    retry with the same spec is still news to them)."""
    _put(store, _key(job, SPEC), {"spec.json": spec_json, "attempt": uuid.uuid4().hex})


def release(store: Store, job: str) -> None:
    """Machine 0's flow run is over (done, failed or cached): the followers may exit."""
    _put(store, _key(job, RELEASED), {"released": str(time.time())})


def follow(store: Store, job: str, start: Callable[[Path], subprocess.Popen], *, poll_s: float = 2.0,
           wait_s: float = 3600.0, log: Callable[[str], None] = print) -> int:
    """Run every spec machine 0 publishes for ``job`` (``start(spec_path)`` starts its process)
    until the job is released; returns the last process's exit code (0 when none ran). A process
    still running when machine 0 publishes a newer spec (its retry) or releases the job is stopped.
    Raises ``TimeoutError`` after ``wait_s`` without a new spec or the release."""
    seen, code = None, 0
    deadline = time.monotonic() + wait_s
    while True:
        if store.exists(_key(job, RELEASED)):
            log(f"multinode job {job}: released by machine 0")
            return code
        if (digest := _spec_digest(store, job)) not in (None, seen):
            seen = digest
            with tempfile.TemporaryDirectory(prefix="r1flow-multinode-") as tmp:
                folder = store.get_dir(_key(job, SPEC), tmp)
                log(f"multinode job {job}: running the stage spec of attempt {(folder / 'attempt').read_text()}")
                code = _watch(start(folder / "spec.json"), store, job, digest, poll_s, log)
            log(f"multinode job {job}: the stage process exited {code}; waiting for a retry or the release")
            deadline = time.monotonic() + wait_s
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"multinode job {job}: nothing from machine 0 for {wait_s:.0f} s "
                               f"(no spec, no release under {store.resolve(_key(job, ''))})")
        time.sleep(poll_s)


def _spec_digest(store: Store, job: str) -> str | None:
    key = _key(job, SPEC)
    return store.manifest(key).digest if store.exists(key) and store.verify(key) else None


def _watch(proc: subprocess.Popen, store: Store, job: str, digest: str, poll_s: float,
           log: Callable[[str], None]) -> int:
    """Wait for ``proc``; stop it when machine 0 has moved on (a newer spec, or the release): a
    rank left hanging in a collective would otherwise wait for its peers until the timeout."""
    from r1flow.launcher import kill_group

    while (code := proc.poll()) is None:
        time.sleep(poll_s)
        if store.exists(_key(job, RELEASED)) or _spec_digest(store, job) not in (None, digest):
            log(f"multinode job {job}: machine 0 moved on; stopping this attempt")
            kill_group(proc)
            return proc.wait()
    return code


def main() -> int:
    """The follower's entry: ``R1FLOW_JOB_ID``, ``R1FLOW_MACHINE_RANK``, ``R1FLOW_MAIN_PROCESS_IP``
    and the store (``R1FLOW_STORE_ROOT``, ``R1FLOW_S3_ENDPOINT_URL``) come from the environment."""
    from r1flow.launcher import stage_command

    missing = [name for name in (JOB_ENV, "R1FLOW_STORE_ROOT", "R1FLOW_MACHINE_RANK") if not os.environ.get(name)]
    if missing:
        print(f"r1flow multinode follower: set {', '.join(missing)}", file=sys.stderr)
        return 2
    store = open_store(os.environ["R1FLOW_STORE_ROOT"], s3_endpoint_url=os.environ.get("R1FLOW_S3_ENDPOINT_URL"))

    def start(spec_path: Path) -> subprocess.Popen:  # its output goes to this process's (the pod's log)
        launch = json.loads(spec_path.read_text())["config"].get("launch", {})
        return subprocess.Popen(stage_command(spec_path, launch), start_new_session=True)

    return follow(store, os.environ[JOB_ENV], start, wait_s=float(os.environ.get("R1FLOW_FOLLOW_WAIT_S", "3600")))


if __name__ == "__main__":
    sys.exit(main())
