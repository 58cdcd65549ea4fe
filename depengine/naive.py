"""The naive engine: every op runs synchronously on the thread that pushed it.

It shares all dependency tracking with the threaded engines, so versions and
failures come out exactly the same; only dispatch differs.  It is the
debugging drop-in: ``DEPENGINE_ENGINE=naive``.
"""

from __future__ import annotations

import threading
from collections import deque

from . import op as _op
from .engine import Engine, _Done
from .op import Op

__all__ = ["NaiveEngine"]

_FINISHED = (_op.DONE, _op.FAILED, _op.SKIPPED)


class NaiveEngine(Engine):
    """Runs each op before ``push`` returns; async ops block ``push`` until ``done``."""

    kind = "naive"

    def _start(self) -> None:
        # One op at a time, in push order, even with several pushing threads.
        # Re-entrant: an op may push (nested ops run at once when they can).
        self._exec_lock = threading.RLock()
        self._ready: deque[Op] = deque()
        self._tls = threading.local()

    def _dispatch(self, op: Op) -> None:
        self._ready.append(op)

    def push(self, *args, **kwargs) -> Op:
        with self._exec_lock:
            op = super().push(*args, **kwargs)
            self._drain()
        return op

    def delete_var(self, var, on_delete=None) -> None:
        with self._exec_lock:
            super().delete_var(var, on_delete)
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

    def _async_started(self, op: Op, done: _Done) -> None:
        with self._lock:
            if op._state in _FINISHED:
                return
            event = done._event = threading.Event()
        event.wait()

    def _in_op(self) -> bool:
        return getattr(self._tls, "depth", 0) > 0
