"""Training curves as a PNG (the RL stages log one to MLflow; the README shows the tiny run's),
and the same curves of several runs overlaid (``r1flow compare``).

Panels are stepped metrics from a ``ListTracker`` history; a panel whose metric was never logged
(e.g. KL with β = 0) is left out rather than drawn empty.
"""

from __future__ import annotations

from pathlib import Path

RL_PANELS = (  # (title, metric keys drawn in that panel)
    ("reward (mean, weighted total)", ("reward/mean",)),
    ("reward per function", ("reward/accuracy/mean", "reward/format/mean", "reward/language/mean",
                             "reward/reward_model/mean")),
    ("held-out pass@1", ("eval/arith_heldout/pass_at_1", "eval/arith_heldout/lenient_pass_at_1")),
    ("KL to the reference", ("kl_k3", "kl_k1")),
    ("clip fraction", ("clip_fraction",)),
    ("response length (tokens)", ("response_length/mean",)),
)


COMPARE_PANELS = (  # (title, metric): one panel per metric, one line per run
    ("reward (mean)", "reward/mean"),
    ("accuracy reward (mean)", "reward/accuracy/mean"),
    ("held-out pass@1", "eval/arith_heldout/pass_at_1"),
    ("KL to the reference (k3)", "kl_k3"),
    ("response length (tokens)", "response_length/mean"),
)


def series(history: list[tuple[int, dict[str, float]]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, in logging order.

    >>> series([(1, {"a": 0.5}), (2, {"b": 1.0}), (3, {"a": 0.7})], "a")
    ([1, 3], [0.5, 0.7])
    """
    points = [(step, metrics[key]) for step, metrics in history if key in metrics]
    return [s for s, _ in points], [v for _, v in points]


Line = tuple[str, list[int], list[float]]  # (label, steps, values)


def plot_curves(history: list[tuple[int, dict[str, float]]], path: str | Path, title: str,
                panels=RL_PANELS) -> Path | None:
    """Write a grid of the panels that have data; None when no panel has any."""
    return _grid([(name, [(key, *series(history, key)) for key in keys]) for name, keys in panels], path, title,
                 legend_from=2)


def plot_overlay(histories: dict[str, list[tuple[int, dict[str, float]]]], path: str | Path, title: str,
                 panels=COMPARE_PANELS) -> Path | None:
    """The same metrics of several runs (``{label: history}``) in one grid, a line per run."""
    return _grid([(name, [(label, *series(history, key)) for label, history in histories.items()])
                  for name, key in panels], path, title, legend_from=1)  # whose line it is, even alone


def _grid(panels: list[tuple[str, list[Line]]], path: str | Path, title: str, legend_from: int) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    drawn = [(name, [line for line in lines if line[1]]) for name, lines in panels]
    drawn = [(name, lines) for name, lines in drawn if lines]
    if not drawn:
        return None
    cols = 3 if len(drawn) > 4 else 2
    rows = -(-len(drawn) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, lines) in zip(axes.flat, drawn):
        for label, steps, values in lines:
            ax.plot(steps, values, marker="o" if len(steps) < 4 else None, label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(lines) >= legend_from:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(drawn):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
