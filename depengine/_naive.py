"""The naive engine: every op runs synchronously on the thread that pushed it.

It shares all dependency tracking with the threaded engines, so versions and
failures come out exactly the same; only dispatch differs.  It is the
debugging drop-in: ``DEPENGINE_ENGINE=naive``.
"""

from __future__ import annotations

import threading
from collections import deque

from ._engine import Done, Engine
from ._op import FINISHED, Op

__all__ = ["NaiveEngine"]


class NaiveEngine(Engine):
    """Runs each op before ``push`` returns; async ops block ``push`` until ``done``."""

    type = "naive"

    def _start(self) -> None:
        # One op at a time, in push order, even with several pushing threads.
        # Re-entrant: an op may push (nested ops run at once when they can).
        self._exec_lock = threading.RLock()
        self._ready: deque[Op] = deque()
        self._tls = threading.local()

    def _dispatch(self, op: Op) -> None:
        self._ready.append(op)

    def _settle(self, op: Op) -> None:
        # Run everything that became ready.  Another thread may be running the
        # ops this one waits for: the lock waits for it, and its drain runs
        # this op too, so the push returns after the op ran either way.
        with self._exec_lock:
            self._drain()

    def _drain(self) -> None:
        tls = self._tls
        ready = self._ready
        while ready:
            try:
                op = ready.popleft()
            except IndexError:
                return
            tls.depth = getattr(tls, "depth", 0) + 1
            try:
                more = self._execute(op)
            finally:
                tls.depth -= 1
            if more:
                ready.extend(more)

    def _async_started(self, op: Op, done: Done) -> None:
        with self._lock:
            if op._state in FINISHED:
                return
            event = done._event = threading.Event()
        event.wait()

    def _in_op(self) -> bool:
        return getattr(self._tls, "depth", 0) > 0
