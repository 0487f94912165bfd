"""Where trainers report: a small protocol, so the library never knows about MLflow or Prefect.

Trainers call ``tracker.log_metrics({...}, step)`` and ``tracker.progress(step, total, **info)``;
stages add tables of samples (``log_table``), files such as plots (``log_artifact``) and every
dataset they read or write, by digest (``log_dataset``).
The stage runner supplies a tracker that writes stepped metrics to MLflow (rank 0 only) and
structured events to stdout; tests and library users pass ``NullTracker()``
(the null object, so trainers never branch on "is tracking on").
"""

from __future__ import annotations

from typing import Any, Protocol


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def progress(self, step: int, total: int, **info: Any) -> None: ...

    def log_table(self, rows: list[dict[str, Any]], name: str) -> None: ...

    def log_artifact(self, path: str, folder: str) -> None: ...

    def log_dataset(self, name: str, rows: list[dict[str, Any]], *, context: str, source: str) -> None: ...

    def flush(self, timeout_s: float = 5.0) -> list[dict]: ...

    def requeue(self, records: list[dict]) -> None: ...

    def close(self, timeout_s: float = 60.0) -> Any: ...


class NullTracker:
    """Tracking off: same methods, no effect."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def progress(self, step: int, total: int, **info: Any) -> None:
        pass

    def log_table(self, rows: list[dict[str, Any]], name: str) -> None:
        pass

    def log_artifact(self, path: str, folder: str) -> None:
        pass

    def log_dataset(self, name: str, rows: list[dict[str, Any]], *, context: str, source: str) -> None:
        """``context``: what the stage did with it — training, evaluation, generation, or output."""

    def flush(self, timeout_s: float = 5.0) -> list[dict]:
        """Metrics logged but not yet delivered (MLflowTracker: still queued for the server)."""
        return []

    def requeue(self, records: list[dict]) -> None:
        """Deliver metrics an earlier process could not (kept by a checkpoint)."""

    def close(self, timeout_s: float = 60.0) -> Any:
        """Flush what is buffered (MLflowTracker: metrics queued for the server); returns its report."""
        return None


class ForwardingTracker(NullTracker):
    """Passes every call on to ``inner``; subclasses add what they do on the way."""

    def __init__(self, inner: Tracker | None = None) -> None:
        self.inner = inner or NullTracker()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.inner.log_metrics(metrics, step)

    def progress(self, step: int, total: int, **info: Any) -> None:
        self.inner.progress(step, total, **info)

    def log_table(self, rows: list[dict[str, Any]], name: str) -> None:
        self.inner.log_table(rows, name)

    def log_artifact(self, path: str, folder: str) -> None:
        self.inner.log_artifact(path, folder)

    def log_dataset(self, name: str, rows: list[dict[str, Any]], *, context: str, source: str) -> None:
        self.inner.log_dataset(name, rows, context=context, source=source)

    def flush(self, timeout_s: float = 5.0) -> list[dict]:
        return self.inner.flush(timeout_s)

    def requeue(self, records: list[dict]) -> None:
        self.inner.requeue(records)

    def close(self, timeout_s: float = 60.0) -> Any:
        return self.inner.close(timeout_s)


class ListTracker(ForwardingTracker):
    """Keeps every logged metric in memory (tests, small scripts, plots), passing everything on
    to ``inner`` when given."""

    def __init__(self, inner: Tracker | None = None) -> None:
        super().__init__(inner)
        self.history: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.history.append((step, dict(metrics)))
        self.inner.log_metrics(metrics, step)

    def series(self, key: str) -> list[float]:
        return [m[key] for _, m in self.history if key in m]


class EventTracker(ForwardingTracker):
    """Reports metrics and progress as structured events on stdout (see ``r1flow.events``)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from r1flow.events import emit

        clean = {k: float(v) for k, v in metrics.items()}
        emit("metrics", step=step, values=clean)
        self.inner.log_metrics(clean, step)

    def progress(self, step: int, total: int, **info: Any) -> None:
        from r1flow.events import emit

        emit("progress", step=step, total=total, info=info)
        self.inner.progress(step, total, **info)
