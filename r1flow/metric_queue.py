"""Stepped metrics to MLflow without ever blocking training on the tracking server.

``log_metrics`` only enqueues; a daemon thread sends LogBatch calls of up to 1000 and, when one
fails (refused, 5xx, timeout), keeps the batch and retries with capped backoff. Past ``max_memory``
metrics go to a JSONL spill file and are sent from it later (one FIFO, memory then spill, so order
per (key, step) holds). Only a full spill (``max_spill``) or a disk error drops a metric, counted.
``close(timeout_s)`` flushes for at most ``timeout_s``; what is still unsent goes to a JSONL file
named in the report. Nothing is lost silently.

MLflow's own HTTP retries (env MLFLOW_HTTP_REQUEST_MAX_RETRIES=7, _BACKOFF_FACTOR=2, _TIMEOUT=120)
are process-wide and can hold a call for minutes, so on an http(s) store the sender posts LogBatch
via ``rest_utils.http_request`` with one try and a short timeout (sqlite/file: ``log_batch``). A
batch in flight when close gives up is reported unsent; should it land anyway, re-logging it is
harmless (MLflow skips a metric whose key, step, timestamp and value are already stored).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

BATCH = 1000  # MLflow's limit on metrics per log_batch call


@dataclass
class QueueReport:
    logged: int  # metrics handed to log_metrics
    sent: int  # acknowledged by the tracking store
    spilled: int  # went through the disk spill (a route, not a fate: they are sent later)
    dropped: int  # never kept: spill full, a disk error, or logged after close
    rejected: int  # refused by the store as invalid (4xx other than 429); not retried
    unsent: int  # still pending at close: they are in unsent_path
    unsent_path: str | None
    last_error: str = ""

    @property
    def lost(self) -> int:
        return self.dropped + self.rejected


def _record(r: tuple) -> str:
    return json.dumps({"key": r[0], "value": r[1], "timestamp": r[2], "step": r[3]}) + "\n"


def _permanent(exc: Exception) -> bool:
    status = getattr(exc, "get_http_status_code", lambda: 500)()
    return 400 <= status < 500 and status != 429


def batch_sender(client, run_id: str, timeout_s: float):
    """``send(metrics)``: one LogBatch; on an http store one try with a ``timeout_s`` timeout."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    try:
        from mlflow.protos.service_pb2 import LogBatch
        from mlflow.store.tracking.rest_store import RestStore
        from mlflow.utils.proto_json_utils import message_to_json
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint, method = RestStore._METHOD_TO_INFO[LogBatch]
    except (ImportError, AttributeError, KeyError):  # another MLflow layout: its client, its retries
        store = None
    if not isinstance(store, RestStore):
        return lambda metrics: client.log_batch(run_id, metrics=metrics)

    def send(metrics: list) -> None:
        body = json.loads(message_to_json(LogBatch(run_id=run_id, metrics=[m.to_proto() for m in metrics])))
        verify_rest_response(http_request(store.get_host_creds(), endpoint, method, max_retries=0,
                                          backoff_factor=0, timeout=timeout_s, json=body), endpoint)

    return send


class MetricQueue:
    def __init__(self, client, run_id: str, spill_dir: str | Path | None = None, *, max_memory: int = 10_000,
                 max_spill: int = 1_000_000, request_timeout_s: float = 5.0, max_backoff_s: float = 5.0) -> None:
        self._send = batch_sender(client, run_id, request_timeout_s)
        spill_dir = Path(spill_dir or tempfile.gettempdir())  # the file is made on the first spill only
        self.spill_path = spill_dir / f"metrics_spill_{run_id}_{os.getpid()}_{id(self):x}.jsonl"
        self.max_memory, self.max_spill, self.max_backoff_s = max(1, max_memory), max_spill, max_backoff_s
        self._mem: deque[tuple] = deque()  # (key, value, timestamp_ms, step), oldest first; then the spill
        self._fd: int | None = None  # spill file, opened on first use
        self._spill_size = self._spill_read = self._spill_pending = 0  # bytes written, bytes read, lines left
        self._cv = threading.Condition()
        self._kick = threading.Event()  # ends a backoff early: close wants a flush now
        self._stopped, self._solo = False, 0  # _solo: resend a rejected batch one metric at a time
        self.logged = self.sent = self.spilled = self.dropped = self.rejected = 0
        self.last_error = ""
        self._report: QueueReport | None = None
        self._thread = threading.Thread(target=self._run, name="r1flow-metric-sender", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Enqueue (training thread): memory while it has room and nothing is spilled, else disk."""
        now = int(time.time() * 1000)
        with self._cv:
            for k, v in metrics.items():
                self._enqueue((str(k), float(v), now, int(step)))
            self._cv.notify()

    def requeue(self, records: list[dict]) -> None:
        """Enqueue metrics a checkpoint kept unsent (``flush``), with their original timestamps: sent
        twice, MLflow stores them once."""
        with self._cv:
            for d in records:
                self._enqueue((str(d["key"]), float(d["value"]), int(d["timestamp"]), int(d["step"])))
            self._cv.notify()

    def flush(self, timeout_s: float) -> list[dict]:
        """Wait up to ``timeout_s`` for what was logged so far to be sent; return what is still
        pending, oldest first (a checkpoint keeps it, so a process killed afterwards loses nothing)."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cv:
            while (self._mem or self._spill_pending) and self._thread.is_alive() and not self._stopped \
                    and time.monotonic() < deadline:
                self._kick.set()
                self._cv.wait(min(deadline - time.monotonic(), 0.5))
            pending = [json.loads(_record(r)) for r in self._mem]
            if self._spill_pending:
                with open(self.spill_path, "rb") as f:
                    f.seek(self._spill_read)
                    pending += [json.loads(line) for line in f if line.strip()]
        return pending

    def _enqueue(self, r: tuple) -> None:
        self.logged += 1
        if self._stopped:
            self._drop(1, "logged after close")
        elif self._spill_pending == 0 and len(self._mem) < self.max_memory:
            self._mem.append(r)
        elif self._spill_pending >= self.max_spill:
            self._drop(1, "spill full")
        else:
            self._spill(_record(r).encode())

    def _drop(self, n: int, why: str) -> None:
        self.dropped += n
        self.last_error = why

    def _spill(self, data: bytes) -> None:
        try:
            if self._fd is None:
                self.spill_path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.spill_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC)
            if os.write(self._fd, data) != len(data):
                raise OSError("short write")
        except OSError as exc:
            self._drop(1, f"spill: {exc}")
            if self._fd is not None:  # cut a partial line: the file stays valid JSONL
                with suppress(OSError):
                    os.ftruncate(self._fd, self._spill_size)
            return
        self._spill_size += len(data)
        self._spill_pending += 1
        self.spilled += 1

    def _load_spill(self, n: int) -> None:
        """Move up to n of the oldest spilled metrics into memory (lock held)."""
        try:
            with open(self.spill_path, "rb") as f:
                f.seek(self._spill_read)
                for line in islice(f, n):
                    d = json.loads(line)
                    self._mem.append((d["key"], float(d["value"]), int(d["timestamp"]), int(d["step"])))
                    self._spill_pending -= 1
                self._spill_read = f.tell()
        except (OSError, ValueError, KeyError) as exc:  # unreadable spill: its metrics are lost, counted
            self._drop(self._spill_pending, f"spill: {exc}")
            self._spill_pending = 0
        if self._spill_pending == 0:  # drained: start the file again
            with suppress(OSError):
                os.ftruncate(self._fd, 0)
            self._spill_size = self._spill_read = 0

    def _run(self) -> None:
        from mlflow.entities import Metric

        backoff = 0.0
        while True:
            with self._cv:
                while not self._stopped and not self._mem and not self._spill_pending:
                    self._cv.wait()
                if self._stopped:
                    return
                if not self._mem:
                    self._load_spill(min(BATCH, self.max_memory))
                    continue
                batch = [Metric(*r) for r in islice(self._mem, 1 if self._solo else BATCH)]
            try:
                self._send(batch)
                ok, permanent = True, False
            except Exception as exc:  # noqa: BLE001 - the store is down, slow, or refuses the batch
                ok, permanent, err = False, _permanent(exc), f"{type(exc).__name__}: {exc}"[:500]
            with self._cv:
                if self._stopped:  # close gave up on this batch: it is in the unsent file
                    return
                if ok or (permanent and len(batch) == 1):
                    for _ in batch:
                        self._mem.popleft()
                    self.sent += len(batch) if ok else 0
                    if not ok:
                        self.rejected += 1
                        self.last_error = err
                    self._solo, backoff = max(0, self._solo - len(batch)), 0.0
                    self._cv.notify_all()
                    continue
                self.last_error = err
                if permanent:  # which metric is bad? resend this batch one by one
                    self._solo = len(batch)
                    continue
            backoff = min(self.max_backoff_s, max(0.25, backoff * 2))
            self._kick.wait(backoff)
            self._kick.clear()

    def close(self, timeout_s: float = 60.0, unsent_path: str | Path | None = None) -> QueueReport:
        """Send what is pending for up to ``timeout_s``, stop, report. What is still unsent is written
        to ``unsent_path`` (default: ``metrics_unsent_*.jsonl`` beside the spill). Idempotent."""
        if self._report is not None:
            return self._report
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cv:
            while (self._mem or self._spill_pending) and self._thread.is_alive() and time.monotonic() < deadline:
                self._kick.set()
                self._cv.wait(min(deadline - time.monotonic(), 0.5))
            self._stopped = True
            self._cv.notify_all()
            unsent, path = len(self._mem) + self._spill_pending, None
            if unsent:
                path = Path(unsent_path or self.spill_path.with_name(self.spill_path.name.replace("spill", "unsent")))
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "wb") as out:
                        out.write("".join(map(_record, self._mem)).encode())
                        if self._spill_pending:  # the spill's unread tail is JSONL already
                            with open(self.spill_path, "rb") as f:
                                f.seek(self._spill_read)
                                shutil.copyfileobj(f, out)
                except OSError as exc:  # nowhere to keep them: they count as dropped
                    self._drop(unsent, f"unsent file: {exc}")
                    unsent, path = 0, None
            self._mem.clear()
            if self._fd is not None:
                os.close(self._fd)
                self.spill_path.unlink(missing_ok=True)
                self._fd = None
            self._report = QueueReport(self.logged, self.sent, self.spilled, self.dropped, self.rejected,
                                       unsent, str(path) if path else None, self.last_error)
        atexit.unregister(self._at_exit)
        return self._report

    def _at_exit(self) -> None:  # never closed by its owner: flush briefly, say what is left
        report = self.close(5.0)
        if report.unsent or report.lost:
            print(f"r1flow: metric queue at exit: {report}", file=sys.stderr)
