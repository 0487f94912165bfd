"""Metric queue against a real MLflow store (sqlite) and real sockets: metrics arrive with their
steps and values, the memory bound spills to disk and still delivers, an unreachable or hung
server never blocks ``log_metrics`` and ``close`` keeps its timeout, and every loss is counted."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from r1flow.mlflow_runs import MLflowTracker, client
from r1flow.tracking import EventTracker, ListTracker, NullTracker


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    c = client(uri)
    return uri, c, c.create_experiment("queue")


def new_run(store) -> str:
    _, c, exp = store
    return c.create_run(exp).info.run_id


def history(c, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def values(step: int) -> dict[str, float]:
    return {"loss": 1.0 / (step + 1), "reward/mean": step * 0.01, "lr": 3e-4}


def test_metrics_arrive_with_steps_and_values_and_trackers_close(store, tmp_path):
    uri, c, _ = store
    run = new_run(store)
    inner = MLflowTracker(uri, run, tmp_path)
    tracker = ListTracker(EventTracker(inner))
    for step in range(1, 51):
        tracker.log_metrics({**values(step), "skipped": float("nan")}, step)
    report = tracker.close(30)
    assert (report.logged, report.sent, report.dropped, report.unsent) == (150, 150, 0, 0)
    for key in values(0):
        assert history(c, run, key) == [(s, values(s)[key]) for s in range(1, 51)]
    assert c.get_metric_history(run, "skipped") == []  # non-finite values are not logged
    assert NullTracker().close(1) is None
    assert inner.close(1) is report  # closing twice is harmless
    assert list(tmp_path.iterdir()) == []


def test_memory_bound_spills_to_disk_and_everything_arrives_in_order(store, tmp_path):
    uri, c, _ = store
    run = new_run(store)
    tracker = MLflowTracker(uri, run, tmp_path, max_memory=10)
    for step in range(400):
        tracker.log_metrics(values(step), step)
    assert tracker.queue.spilled > 0
    report = tracker.close(30)
    assert (report.sent, report.dropped, report.unsent) == (1200, 0, 0) and report.spilled > 0
    for key in values(0):
        got = c.get_metric_history(run, key)
        assert [m.step for m in got] == list(range(400))  # logged order kept
        assert sorted((m.step, m.value) for m in got) == [(s, values(s)[key]) for s in range(400)]
    assert list(tmp_path.iterdir()) == []  # the spill file is gone once drained


def test_unreachable_server_never_blocks_and_close_keeps_what_is_unsent(tmp_path):
    tracker = MLflowTracker(f"http://127.0.0.1:{closed_port()}", "0" * 32, tmp_path, max_memory=1000)
    slowest, start = 0.0, time.perf_counter()
    for step in range(2000):
        t = time.perf_counter()
        tracker.log_metrics(values(step), step)
        slowest = max(slowest, time.perf_counter() - t)
    assert time.perf_counter() - start < 1.0 and slowest < 0.05
    t = time.perf_counter()
    report = tracker.close(1.0)
    assert time.perf_counter() - t < 2.0
    assert (report.logged, report.sent, report.dropped, report.unsent) == (6000, 0, 0, 6000)
    assert report.spilled == 5000 and "refused" in report.last_error.lower()
    rows = [json.loads(line) for line in Path(report.unsent_path).read_text().splitlines()]
    assert [(r["key"], r["step"], r["value"]) for r in rows] == [
        (k, s, v) for s in range(2000) for k, v in values(s).items()]


def test_hung_server_close_keeps_its_timeout(tmp_path):
    # A socket that listens but never answers: connects succeed, requests hang.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        tracker = MLflowTracker(f"http://127.0.0.1:{hung.getsockname()[1]}", "0" * 32, tmp_path,
                                request_timeout_s=30)
        for step in range(20):
            t = time.perf_counter()
            tracker.log_metrics(values(step), step)
            assert time.perf_counter() - t < 0.05
        time.sleep(0.3)  # the sender is now stuck in its request
        t = time.perf_counter()
        report = tracker.close(1.0)
        assert time.perf_counter() - t < 2.0
    assert (report.sent, report.unsent, report.dropped) == (0, 60, 0)
    assert len(Path(report.unsent_path).read_text().splitlines()) == 60


def test_spill_bound_exceeded_counts_every_drop(tmp_path):
    tracker = MLflowTracker(f"http://127.0.0.1:{closed_port()}", "0" * 32, tmp_path,
                            max_memory=100, max_spill=200)
    for step in range(1000):
        tracker.log_metrics({"loss": float(step)}, step)
    report = tracker.close(0.5)
    assert (report.logged, report.sent, report.spilled, report.dropped, report.unsent) == (1000, 0, 200, 700, 300)
    assert report.lost == 700
    steps = [json.loads(line)["step"] for line in Path(report.unsent_path).read_text().splitlines()]
    assert steps == list(range(300))
    tracker.log_metrics({"loss": 1.0}, 1000)  # after close: counted, not sent
    assert tracker.queue.dropped == 701


def test_a_rejected_metric_is_counted_and_the_rest_of_its_batch_arrives(store, tmp_path):
    uri, c, _ = store
    run = new_run(store)
    tracker = MLflowTracker(uri, run, tmp_path)
    for step in range(5):
        tracker.log_metrics({"loss": float(step), "bad/../key": 1.0, "lr": 0.1}, step)
    report = tracker.close(30)
    assert (report.sent, report.rejected, report.dropped, report.unsent) == (10, 5, 0, 0)
    assert report.lost == 5 and "bad/../key" in report.last_error
    assert history(c, run, "loss") == [(s, float(s)) for s in range(5)]
    assert history(c, run, "lr") == [(s, 0.1) for s in range(5)]


def test_a_checkpoint_keeps_undelivered_metrics_and_a_restore_sends_them(store, tmp_path):
    """The tracking server is away while a stage logs 5 steps and checkpoints, then the process
    dies: the checkpoint holds the 15 undelivered metrics, and the resumed process (server back)
    delivers them with their original timestamps."""
    import torch

    from r1flow.checkpoint import PENDING_METRICS, Checkpointer
    from r1flow.store_local import LocalStore

    uri, c, _ = store
    run = new_run(store)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    away = MLflowTracker(f"http://127.0.0.1:{closed_port()}", run, tmp_path / "spill-a", request_timeout_s=0.2)
    for step in range(1, 6):
        away.log_metrics(values(step), step)
    ckpt = Checkpointer(LocalStore(tmp_path / "store"), "checkpoints/s/k", every=1, log=lambda m: None, tracker=away)
    started = time.monotonic()
    ckpt.save(5, model=model, optimizer=opt, scheduler=sched, extra={})
    assert time.monotonic() - started < 10  # a bounded wait, not MLflow's minutes of retries
    saved = json.loads((tmp_path / "store/checkpoints/s/k/step-00000005" / PENDING_METRICS).read_text())
    assert len(saved) == 15 and {d["step"] for d in saved} == {1, 2, 3, 4, 5}
    away.close(0.1)  # the process "dies"

    back = MLflowTracker(uri, run, tmp_path / "spill-b")
    resumed = Checkpointer(LocalStore(tmp_path / "store"), "checkpoints/s/k", every=1, log=lambda m: None, tracker=back)
    assert resumed.restore(model=model, optimizer=opt, scheduler=sched).step == 5
    report = back.close(30)
    assert report.sent == 15 and report.unsent == 0
    for key in values(0):
        assert history(c, run, key) == [(s, values(s)[key]) for s in range(1, 6)]
    stamps = {(d["key"], d["step"]): d["timestamp"] for d in saved}
    assert all(m.timestamp == stamps[("loss", m.step)] for m in c.get_metric_history(run, "loss"))
