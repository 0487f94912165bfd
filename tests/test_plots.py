"""Curves PNG: panels with data are drawn, metrics never logged are left out, and the tracker
records history while passing everything on."""

from __future__ import annotations

from r1flow.plots import RL_PANELS, plot_curves, series
from r1flow.tracking import ListTracker


class Recorder(ListTracker):
    def __init__(self) -> None:
        super().__init__()
        self.artifacts: list[tuple[str, str]] = []

    def log_artifact(self, path: str, folder: str) -> None:
        self.artifacts.append((path, folder))


def test_list_tracker_records_and_forwards():
    inner = Recorder()
    outer = ListTracker(inner)
    outer.log_metrics({"reward/mean": 0.5}, 1)
    outer.log_artifact("/tmp/x.png", "plots")
    assert outer.series("reward/mean") == inner.series("reward/mean") == [0.5]
    assert inner.artifacts == [("/tmp/x.png", "plots")]


def test_plot_draws_only_panels_with_data(tmp_path):
    history = [(s, {"reward/mean": s / 10, "response_length/mean": 30 + s, "clip_fraction": 0.0})
               for s in range(1, 11)] + [(10, {"eval/arith_heldout/pass_at_1": 0.4})]
    assert series(history, "eval/arith_heldout/pass_at_1") == ([10], [0.4])
    path = plot_curves(history, tmp_path / "curves.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert plot_curves([(1, {"unrelated": 1.0})], tmp_path / "none.png", "empty") is None
    assert not (tmp_path / "none.png").exists()
    assert any("kl_k3" in keys for _, keys in RL_PANELS)
