"""Fault injection against a real ``mlflow server`` on loopback (make test-faults): the server is
stopped for 30 s, or frozen, while a real torch training loop logs every step through
MLflowTracker. Training must not notice, and after ``close`` the server must hold every
(metric, step) with the value logged, nothing dropped."""

from __future__ import annotations

import signal
import statistics
import threading
import time

import pytest
import torch

from r1flow.mlflow_runs import MLflowTracker, client
from tests.mlflowserver import Server

pytestmark = pytest.mark.faults
OUTAGE_S = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    yield srv
    try:
        srv.signal(signal.SIGCONT)
    except (ProcessLookupError, AttributeError):
        pass
    srv.stop()


def train(trackers: list[MLflowTracker], until: threading.Event, extra_s: float, period_s: float = 0.2):
    """Real optimizer steps of a small MLP, one every ``period_s``, each logging 10 metrics to every
    tracker; runs until ``until`` is set, then ``extra_s`` more. Returns (logged, step records)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.Tanh(), torch.nn.Linear(256, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(1024, 32)
    y = x[:, :4].sum(1, keepdim=True)
    logged: dict[str, dict[int, float]] = {}
    records = []  # (wall time, step time, slowest log_metrics call)
    stop_at, step, next_tick = None, 0, time.monotonic()
    while stop_at is None or time.monotonic() < stop_at:
        if stop_at is None and until.is_set():
            stop_at = time.monotonic() + extra_s
        step += 1
        t0 = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        metrics = {"loss": loss.item(), "grad_norm": grad_norm.item(), "lr": 1e-3, "step_time_s": 0.0,
                   **{f"probe/{i}": step * 10.0 + i for i in range(6)}}
        metrics["step_time_s"] = time.perf_counter() - t0
        slowest = 0.0
        for tracker in trackers:
            t1 = time.perf_counter()
            tracker.log_metrics(metrics, step)
            slowest = max(slowest, time.perf_counter() - t1)
        for k, v in metrics.items():
            logged.setdefault(k, {})[step] = v
        records.append((time.monotonic(), time.perf_counter() - t0, slowest))
        next_tick += period_s
        time.sleep(max(0.0, next_tick - time.monotonic()))
    return logged, records


def assert_all_arrived(uri: str, run_id: str, logged: dict[str, dict[int, float]]) -> None:
    c = client(uri)
    for key, by_step in logged.items():
        got = {m.step: m.value for m in c.get_metric_history(run_id, key)}
        assert got == pytest.approx(by_step, rel=1e-12, abs=0), key


def new_runs(server: Server, name: str, n: int) -> list[str]:
    c = client(server.uri)
    exp = c.get_experiment_by_name(name) or c.get_experiment(c.create_experiment(name))
    return [c.create_run(exp.experiment_id).info.run_id for _ in range(n)]


def test_server_down_30s_training_goes_on_and_every_metric_arrives(server, tmp_path):
    plain_run, tiny_run = new_runs(server, "outage", 2)
    plain = MLflowTracker(server.uri, plain_run, tmp_path / "plain")  # 10,000 in memory: no spill
    tiny = MLflowTracker(server.uri, tiny_run, tmp_path / "tiny", max_memory=20)  # spills at once
    marks: dict[str, float] = {}
    done = threading.Event()

    def outage():
        time.sleep(5)
        marks["down"] = time.monotonic()
        server.stop()
        marks["stopped"] = time.monotonic()
        marks["was_down"] = not server.healthy()
        time.sleep(OUTAGE_S)  # down for 30 s from the moment it is gone
        marks["restart"] = time.monotonic()
        marks["held"] = plain.queue.logged - plain.queue.sent  # queued while the server was away
        server.start()  # same port, same sqlite store
        marks["up"] = time.monotonic()
        done.set()

    chaos = threading.Thread(target=outage, daemon=True)
    chaos.start()
    logged, records = train([plain, tiny], done, extra_s=4.0)
    chaos.join(5)
    assert marks["was_down"] and marks["restart"] - marks["stopped"] >= OUTAGE_S
    assert marks["held"] >= 10 * 100, marks
    reports = [plain.close(60), tiny.close(60)]
    for report in reports:
        assert report.dropped == report.rejected == report.unsent == 0, report
        assert report.sent == report.logged == 10 * len(records)
        assert report.last_error, report  # the outage was seen
    assert reports[0].spilled == 0 and reports[1].spilled > 100
    assert_all_arrived(server.uri, plain_run, logged)
    assert_all_arrived(server.uri, tiny_run, logged)

    before = [r[1] for r in records if r[0] < marks["down"]]
    during = [r[1] for r in records if marks["stopped"] <= r[0] < marks["restart"]]
    assert len(before) >= 15 and len(during) >= 100
    assert max(r[2] for r in records) < 0.1  # no log_metrics call blocked
    # Step times during the outage stay normal (generous: two shared cores).
    assert statistics.median(during) < 3 * statistics.median(before) + 0.005, (before, during)
    print(f"held {marks['held']}, reports {reports}, slowest log {max(r[2] for r in records):.4f}s, "
          f"median step {statistics.median(before):.4f}s before / {statistics.median(during):.4f}s during")


def test_frozen_server_times_out_requests_without_slowing_training(server, tmp_path):
    (run,) = new_runs(server, "frozen", 1)
    tracker = MLflowTracker(server.uri, run, tmp_path, max_memory=30, request_timeout_s=1.0)
    done = threading.Event()
    marks = {}

    def freeze():
        time.sleep(2)
        server.signal(signal.SIGSTOP)  # connections are accepted by the kernel, never answered
        marks["hung"] = not server.healthy(timeout=1.0)
        time.sleep(7)
        server.signal(signal.SIGCONT)
        done.set()

    chaos = threading.Thread(target=freeze, daemon=True)
    chaos.start()
    logged, records = train([tracker], done, extra_s=2.0)
    chaos.join(5)
    report = tracker.close(60)
    assert marks["hung"] and "timed out" in report.last_error.lower(), report
    assert (report.dropped, report.rejected, report.unsent) == (0, 0, 0) and report.spilled > 0
    assert report.sent == report.logged == 10 * len(records)
    assert max(r[2] for r in records) < 0.1
    assert_all_arrived(server.uri, run, logged)
    print(f"frozen: {report}, slowest log {max(r[2] for r in records):.4f}s")
