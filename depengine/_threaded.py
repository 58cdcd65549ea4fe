"""The threaded engine: one pool of CPU workers fed by one priority ready queue."""

from __future__ import annotations

import threading

from scheduler import WorkerPool

from ._engine import Engine

__all__ = ["ThreadedEngine"]


class ThreadedEngine(Engine):
    """Runs each ready op on one of ``workers`` threads, highest priority first."""

    type = "threaded"

    def _start(self) -> None:
        self._pool = WorkerPool(self._execute, self.options.workers, name="depengine-cpu")
        self._worker_ids = self._pool.thread_ids
        self._dispatch = self._pool.submit_fast

    def _plan_submit(self):
        return self._pool.submit

    def threads(self) -> list[threading.Thread]:
        return list(self._pool.threads)

    def _in_op(self) -> bool:
        return threading.get_ident() in self._worker_ids

    def _stop(self) -> None:
        self._pool.close()
