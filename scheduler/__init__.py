"""Worker pools, ready queues and streams.  Knows nothing of vars or dependencies."""

import os

from .ready_queue import ReadyQueue
from .workers import WorkerPool

__all__ = ["ReadyQueue", "WorkerPool", "usable_cores"]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
