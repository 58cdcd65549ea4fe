"""Worker pools, ready queues and streams.  Knows nothing of vars or dependencies."""

from .ready_queue import ReadyQueue
from .workers import WorkerPool

__all__ = ["ReadyQueue", "WorkerPool"]
