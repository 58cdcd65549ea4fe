"""How a compiled plan runs on the CPU: its members, one run's state, its chunks.

A run of a plan (``Plan._start``, the body of the plan op) starts the chunks
without predecessors; each chunk runs its members in order
(``_composite.run_members``) and counts down the chunks after it; the last
one finishes the run (``Run.finish``), which completes the plan op.

A plan whose every member is a native body (``de.native``) on the compiled
core also has a ``NativePlan`` (``depengine/_core_plan.c``, made by
:func:`native_plan`): the same chunks, successor lists and counters in C.
Its runs call the members from the workers without the GIL and never enter
Python between the start and the finish of a run, unless a member fails:
then the rest of that run goes through :meth:`Run.native_failed` and
:meth:`Run.run_chunk`, under the usual failure rules.
"""

from __future__ import annotations

import threading

from scheduler.locks import acquire_yielding

from ._composite import Outcome, run_members
from ._device import cpu
from ._native import NativeError
from ._op import Op, new_op

__all__ = ["Chunk", "Run", "native_plan", "new_member", "topological"]

_CPU = cpu()


def new_member(fn, reads, writes, name, priority, always_run=False, index=0) -> Op:
    """An op a plan runs itself (never registered with the engine)."""
    m = new_op(fn, reads, writes, name, priority, always_run, False, _CPU, "normal", None)
    m.id = index
    m._wait = 0
    return m


def native_plan(plan):
    """The plan's chunks as a ``NativePlan`` when every member is a native body in the compiled
    core's form and the plan runs on a compiled engine; else None."""
    core = getattr(plan.engine, "_core", None)
    if core is None or plan.mode != "plan" or not plan.members:
        return None
    from . import _core

    if not all(type(m.fn) is _core.Native for m in plan.members):
        return None
    chunks = [[m.fn for m in members] for members in plan.chunk_members]
    return _core.NativePlan(core, chunks, [list(s) for s in plan.succ], plan.order)


class Run:
    """The state of one run of a plan: counters, failures, and the plan op's ``done``.

    Runs of one plan never overlap (every run writes the plan's vars), so the
    plan's chunk items are made once and point at the current run.
    """

    __slots__ = ("counters", "ctx", "done", "failures", "lock", "members", "outcome", "plan", "prof",
                 "remaining", "versions")

    def __init__(self, plan, ctx, members, failures, done, prof) -> None:
        self.plan = plan
        self.ctx = ctx  # the plan run's op
        self.members = members
        self.counters = list(plan.npred)
        self.remaining = len(plan.chunks)
        self.failures = failures
        self.outcome = Outcome(members_recorded=prof is not None)
        self.done = done
        self.prof = prof
        self.versions = {} if prof is not None else None
        self.lock = threading.Lock()

    def run_chunk(self, g: int) -> None:
        if self.prof is None:
            members = self.plan.chunk_members[g]
        else:
            members = [self.members[i] for i in self.plan.chunks[g]]
        run_members(members, self.failures, self.outcome, self.prof, self.versions)

    def native_failed(self, g: int, index: int, code: int) -> None:
        """The NativePlan's member ``index`` of chunk ``g`` returned ``code``: the rest of the chunk
        runs here, under the failure rules (the members before it returned 0)."""
        members = self.plan.chunk_members[g][index:]
        error = NativeError(code, f"native op {members[0].name!r}")
        run_members(members, self.failures, self.outcome, raised=error)

    def serial(self) -> None:
        for g in self.plan.order:
            self.run_chunk(g)
        self.finish()

    def finish(self) -> None:
        out = self.outcome
        out.failures = {v: self.failures.get(v) for v in self.plan.writes if self.failures.get(v)}
        self.plan.current = None
        if out.worth_reporting():
            self.ctx._outcome = out
        self.done()


def topological(plan) -> list[int]:
    """The plan's chunks in an order where each comes after its predecessors."""
    counters = list(plan.npred)
    order, stack = [], list(reversed(plan.roots))
    while stack:
        g = stack.pop()
        order.append(g)
        for s in reversed(plan.succ[g]):
            counters[s] -= 1
            if not counters[s]:
                stack.append(s)
    return order


class Chunk:
    """A dispatch of a plan run: one chain of its ops, run by one worker."""

    __slots__ = ("g", "plan", "succ")
    priority = 0
    device = _CPU
    kind = "normal"
    stream = None
    reads = ()
    writes = ()

    def __init__(self, plan, g: int) -> None:
        self.plan = plan
        self.g = g

    def execute(self) -> list:
        run = self.plan.current
        run.run_chunk(self.g)
        ready = []
        items = self.plan.items
        counters = run.counters
        lock = run.lock
        if not lock.acquire(False):
            acquire_yielding(lock)
        try:
            for s in self.succ:
                counters[s] -= 1
                if not counters[s]:
                    ready.append(items[s])
            run.remaining -= 1
            last = not run.remaining
        finally:
            lock.release()
        if last:
            run.finish()
        return ready
