"""A grading worker process: ``python -m r1flow.rewards.worker FD MEMORY_MB [MODULE ...]``.

Started by ``r1flow.rewards.pool.GradingPool`` (see there for why a fresh interpreter). It caps
its address space, imports the preload modules, says ``ready``, then answers one
``(fn, args, timeout_s)`` at a time on the socket ``FD`` until the parent closes it or dies.
The parent kills a worker that overruns; as a backstop that needs no parent (and no GIL: sympy
holds it for the whole of a huge integer power), faulthandler's watchdog thread ends the
worker ``GRACE_S`` after an item's deadline.
"""

from __future__ import annotations

import faulthandler
import importlib
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection

from r1flow.rewards.pool import READY

GRACE_S = 2.0


def serve(fd: int, memory_limit_mb: int, preload: Sequence[str]) -> None:
    """Receive (fn, args, timeout_s), send back (True, float) or (False, error text)."""
    if memory_limit_mb > 0:
        import resource

        limit = memory_limit_mb * 2**20
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError):  # macOS refuses RLIMIT_AS: run uncapped
            pass
    for module in preload:
        importlib.import_module(module)
    conn = Connection(fd)
    conn.send(READY)
    while True:
        try:
            fn, args, timeout_s = conn.recv()
        except EOFError:
            return
        faulthandler.dump_traceback_later(timeout_s + GRACE_S, exit=True)
        try:
            reply = (True, float(fn(*args)))
        except Exception as error:  # sent back: the parent raises it
            reply = (False, f"{type(error).__name__}: {error}")
        faulthandler.cancel_dump_traceback_later()
        conn.send(reply)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
