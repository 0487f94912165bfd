"""Structured events from a stage process to its orchestrator.

A stage process prints one JSON object per line, prefixed with ``@r1flow ``, on stdout; anything
else it prints is plain log text. The orchestrating task parses these lines into Prefect logs and
artifacts, so the library reports progress without importing Prefect.

Kinds: ``log`` (message, level), ``metrics`` (step, values), ``progress`` (step, total, info),
``result`` (the ArtifactRef the stage produced), ``error`` (kind, message).
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

PREFIX = "@r1flow "


def emit(event: str, stream: TextIO | None = None, **data: Any) -> None:
    """Write one event line and flush, so the orchestrator sees it at once."""
    out = stream or sys.stdout
    out.write(PREFIX + json.dumps({"event": event, **data}, default=str) + "\n")
    out.flush()


def parse(line: str) -> dict[str, Any] | None:
    """The event on ``line``, or None when the line is plain output."""
    if not line.startswith(PREFIX):
        return None
    try:
        event = json.loads(line[len(PREFIX):])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None
