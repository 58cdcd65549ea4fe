"""Capturing pushes: ``Engine.record()`` (recorded plans) and ``Engine.bulk()``.

A mixin of :class:`~depengine._engine.Engine`.  While a record or bulk block
is active anywhere, ``_capturing`` is non-zero and every push asks
``_capture`` whether a recording or bulk of the pushing thread takes the op;
otherwise pushes pay one attribute test.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from threading import get_ident

from . import profiler
from ._composite import Outcome, run_members, seed_failures
from ._device import cpu
from ._errors import DepengineError
from ._op import Op

__all__ = ["Bulk", "Capturing", "PerThread", "check_bulk_size"]

_CPU = cpu()
_sleep = time.sleep
# pending ops (bulks, mostly) past which a flushing thread yields the GIL
_BULK_BACKLOG = 4


class Capturing:
    """``record()``, ``bulk()`` and the capture of pushes they need."""

    @contextmanager
    def record(self, execute: bool = True):
        """Capture the ops this thread pushes into a :class:`~depengine.plan.Graph`.

        ``execute=False`` only captures.  ``graph.compile()`` makes a plan to replay.
        """
        from .plan import Graph

        if execute.__class__ is not bool:
            raise TypeError(f"execute={execute!r} must be a bool")
        with self._guard:
            if self._graph is not None:
                raise DepengineError("record() is already active on this engine: records do not nest")
            graph = self._graph = Graph(self, execute)
            self._capturing += 1
        try:
            yield graph
        finally:
            with self._guard:
                self._graph = None
                self._capturing -= 1
            graph.closed = True

    @contextmanager
    def bulk(self, size: int = 64):
        """Group up to ``size`` consecutive small CPU ops this thread pushes into one dispatch.

        Any wait, and the end of the block, hands the group to the engine.
        """
        check_bulk_size(size)
        local = self._bulks
        outer = local.bulk
        if outer is not None:
            self._flush_bulk()
        local.bulk = Bulk(size)
        with self._guard:
            self._capturing += 1
        try:
            yield
        finally:
            self._flush_bulk()
            local.bulk = outer
            with self._guard:
                self._capturing -= 1

    def _capture(self, op: Op, pure: bool) -> bool:
        """A push while a record or bulk is active: True if the op was taken (not registered)."""
        graph = self._graph
        if graph is not None and graph.thread == get_ident():
            graph.add(op, pure)
            if not graph.execute:
                op.id = -len(graph)  # a template: never registered
                return True
        bulk = self._bulks.bulk
        if bulk is None:
            return False
        if op.is_async or op.device is not _CPU or op.kind != "normal" or op._wcounts is not None:
            self._flush_bulk()  # an op a bulk cannot hold ends the bulk's run of ops
            return False
        if self._prof is not None:
            profiler.stamp_pushed(op, self)
        ops = bulk.ops
        ops.append(op)
        if len(ops) >= bulk.size:
            self._flush_bulk()
        return True

    def _flush_bulk(self) -> None:
        """Hand this thread's bulked ops to the engine as one composite op."""
        bulk = self._bulks.bulk
        if bulk is None or not bulk.ops:
            return
        members, bulk.ops = bulk.ops, []
        n = len(members)
        k = self._take_ids(n)  # the members' ids, in push order, before the bulk's own
        # One plain loop (here it beats Counter, chain and attrgetter).  Members
        # that name the same writes tuple in a row (pushes of [v] share v's)
        # are counted as a run.
        counts: dict = {}  # var -> members writing it
        read = set()
        top = members[0].priority
        last = members[0].writes
        run = 0
        for m in members:
            m.id = k
            k += 1
            w = m.writes
            if w is last:
                run += 1
            else:
                for v in last:
                    counts[v] = counts.get(v, 0) + run
                last, run = w, 1
            if m.reads:
                read.update(m.reads)
            if m.priority > top:
                top = m.priority
        for v in last:
            counts[v] = counts.get(v, 0) + run
        reads = tuple(read.difference(counts)) if read else ()
        prof = self._prof

        def run_bulk(ctx):
            outcome = Outcome(members_recorded=prof is not None)
            failures = seed_failures(ctx, set(reads) | set(counts))
            run_members(members, failures, outcome, prof, {} if prof is not None else None)
            outcome.failures = {v: failures[v] for v in counts if failures.get(v) is not None}
            if outcome.worth_reporting():
                ctx._outcome = outcome

        self.push(run_bulk, reads, tuple(counts), f"bulk({n})", top, True, None, "normal", False, False, None,
                  counts)
        if self._backlog() > _BULK_BACKLOG and not self._in_op():
            # Members wait in memory until their bulk runs.  A pusher far
            # ahead of the workers keeps thousands alive, and the garbage
            # collector then promotes them and walks the whole heap (tens of
            # ms).  Yield the GIL: the workers drain the queue meanwhile.
            _sleep(0)


def check_bulk_size(size) -> None:
    if size.__class__ is not int or size < 1:
        raise ValueError(f"bulk size={size!r} must be an int >= 1")


class PerThread(threading.local):
    """Per-thread state of an engine: the active bulk, if any."""

    bulk = None


class Bulk:
    """The ops this thread pushed inside ``Engine.bulk(size)``, not yet handed to the engine."""

    __slots__ = ("ops", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ops: list[Op] = []
