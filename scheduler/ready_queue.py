"""A ready queue: higher priority first, FIFO among equal priorities.

Items are opaque to the queue except for an integer ``priority`` that the
caller passes along.  The common case (every item at priority 0) stays as
cheap as a plain FIFO: a ``deque`` append plus one token on a C-implemented
``queue.SimpleQueue`` that blocked consumers sleep on.  Items with any other
priority live in a heap behind a lock.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
from queue import SimpleQueue

__all__ = ["ReadyQueue"]


class ReadyQueue:
    """Multi-producer, multi-consumer priority queue with a FIFO fast path."""

    __slots__ = ("_fifo", "_heap", "_lock", "_tiebreak", "_tokens", "empty")

    def __init__(self) -> None:
        # invariant: self._tokens.qsize() == len(self._fifo) + len(self._heap)
        #            (between a put/get pair's two steps it may be lower, never higher)
        self._fifo: deque = deque()
        # entries are (-priority, tiebreak, item); priority != 0 only
        self._heap: list = []
        self._lock = threading.Lock()
        self._tokens: SimpleQueue = SimpleQueue()
        # empty(): True when no item is waiting (a hint: other threads may change it).
        # The token queue's own method: a worker asks it after every item it runs.
        self.empty = self._tokens.empty
        self._tiebreak = itertools.count()

    def put(self, item, priority: int = 0) -> None:
        """Enqueue ``item``; it starts after every queued item of higher priority."""
        if priority:
            with self._lock:
                heapq.heappush(self._heap, (-priority, next(self._tiebreak), item))
        else:
            self._fifo.append(item)
        self._tokens.put(None)

    def put_item(self, item) -> None:
        """``put(item, item.priority)``."""
        priority = item.priority
        if priority:
            with self._lock:
                heapq.heappush(self._heap, (-priority, next(self._tiebreak), item))
        else:
            self._fifo.append(item)
        self._tokens.put(None)

    def get(self, timeout: float | None = None):
        """Block until an item is available and return the best one.

        Raises ``queue.Empty`` if ``timeout`` expires first.
        """
        self._tokens.get(True, timeout)
        if not self._heap:
            try:
                return self._fifo.popleft()
            except IndexError:
                pass  # a prioritized item arrived meanwhile
        return self._pop()

    def get_nowait(self):
        """Return the best item, or raise ``queue.Empty`` at once."""
        self._tokens.get_nowait()
        return self._pop()

    def _pop(self):
        # A token was taken, so at least one item is ours to take.
        if self._heap:
            with self._lock:
                heap = self._heap
                if heap and (heap[0][0] < 0 or not self._fifo):
                    return heapq.heappop(heap)[2]
        try:
            return self._fifo.popleft()
        except IndexError:
            # Another consumer took the FIFO item we saw; ours is in the heap.
            with self._lock:
                return heapq.heappop(self._heap)[2]

    def __len__(self) -> int:
        return self._tokens.qsize()

    def best_priority(self) -> int | None:
        """Priority of the item ``get`` would return now, or None if empty."""
        with self._lock:
            top = -self._heap[0][0] if self._heap else None
        if self._fifo and (top is None or top < 0):
            return 0
        return top

    def __repr__(self) -> str:
        return f"<ReadyQueue fifo={len(self._fifo)} prioritized={len(self._heap)}>"
