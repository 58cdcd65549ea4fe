"""Worker threads that run items taken from a ready queue.

The pool knows nothing of what an item is beyond its integer ``priority``.
It calls ``run(item, pool)``, which returns the list of items that finishing
``item`` made ready for this pool (``pool`` is the pool itself, so one
callback can serve several pools).  When nothing queued was ready earlier,
the worker runs the best of them itself instead of waking a sleeping thread,
which costs more than a small item does.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Sequence

from .ready_queue import ReadyQueue

__all__ = ["WorkerPool"]

_log = logging.getLogger("depengine.scheduler")

# Lower than any priority a user can reach through an int that fits a word,
# so shutdown sentinels start after every real item already queued.
_SENTINEL_PRIORITY = -sys.maxsize


class WorkerPool:
    """``size`` daemon threads that take items from one :class:`ReadyQueue`.

    Items must carry an integer ``priority`` attribute; higher starts first.
    """

    def __init__(
        self,
        run: Callable[[object, WorkerPool], list],
        size: int,
        *,
        name: str = "depengine-worker",
        initializer: Callable[[], None] | None = None,
    ) -> None:
        if type(size) is not int or size < 1:
            raise ValueError(f"worker pool size={size!r} must be an int >= 1")
        self.name = name
        self.size = size
        self.queue = ReadyQueue()
        self._run = run
        self._initializer = initializer
        self.threads: tuple[threading.Thread, ...] = tuple(
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        )
        self._closed = False
        for t in self.threads:
            t.start()
        self.thread_ids: frozenset[int] = frozenset(t.ident for t in self.threads)

    def submit(self, item) -> None:
        """Queue ``item`` for any idle worker of this pool."""
        self.queue.put(item, item.priority)

    @property
    def submit_fast(self):
        """``submit`` without the method call: the queue's own ``put_item``."""
        return self.queue.put_item

    def continue_with(self, items: Sequence) -> object | None:
        """Take the items a worker of this pool just made ready.

        Returns the item the calling worker should run next itself, or None
        when it should take the next one from the queue (because queued items
        were ready earlier or rank higher).
        """
        queue = self.queue
        if len(items) == 1:
            item = items[0]
            if queue.empty():
                return item
            queue.put(item, item.priority)
            return None
        if any(item.priority for item in items):
            items = sorted(items, key=_priority, reverse=True)  # stable: FIFO among equals
        if queue.empty():
            for item in items[1:]:
                queue.put(item, item.priority)
            return items[0]
        for item in items:
            queue.put(item, item.priority)
        return None

    def _loop(self) -> None:
        if self._initializer is not None:
            try:
                self._initializer()
            except Exception:
                _log.exception("worker %s: initializer failed", self.name)
        queue = self.queue
        get = queue.get
        empty = queue.empty
        run = self._run
        continue_with = self.continue_with
        while True:
            item = ready = None  # hold nothing finished while idle (ops may own big buffers)
            item = get()
            if item is None:
                return
            while True:
                try:
                    ready = run(item, self)
                except Exception:  # an engine bug; keep the worker alive
                    _log.exception("worker %s: internal error running %r", self.name, item)
                    break
                if not ready:
                    break
                if len(ready) == 1 and empty():  # the common case of continue_with
                    item = ready[0]
                else:
                    item = continue_with(ready)
                    if item is None:
                        break

    def close(self) -> None:
        """Stop every worker once the items already queued have run; join them."""
        if self._closed:
            return
        self._closed = True
        for _ in self.threads:
            self.queue.put(None, _SENTINEL_PRIORITY)
        me = threading.get_ident()
        for t in self.threads:
            if t.ident != me:
                t.join()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<WorkerPool {self.name!r} size={self.size} queued={len(self.queue)} {state}>"


def _priority(item) -> int:
    return item.priority
