"""One compute on the engine: pushes, waits, failures, Ctrl-C, and dask.local's state for callbacks.

Every task of the plan is pushed at once, dependencies first: the task writes
the var of its key (when some task reads it) and reads the vars of the tasks
it needs; the plan's rank gives the op's priority (see ``_push``).  The
engine then runs each task as soon as its inputs exist, on its workers.  The
calling thread only waits for one event, set by the task that completes the
last requested key or by the first task that fails.

Failures never reach the engine: the task catches what it raised, stops the
compute (tasks not started yet return at once) and wakes the caller, which
re-raises the original exception.  So a dask error never becomes a failed
var that some other user of the engine would be told about.

Ctrl-C: while the tasks are pushed, SIGINT is deferred (the engine's push
must not be cut in the middle) but stops the compute at once; while the
caller waits, it interrupts the wait (within ``_POLL`` seconds even when the
signal lands just before the wait blocks, where Python would not see it).
Either way the compute is stopped, ``finish`` callbacks run,
``KeyboardInterrupt`` propagates, and the ops still queued drain as no-ops:
the engine stays usable.
"""

from __future__ import annotations

import itertools
import signal
import threading

from .. import profiler
from ._graph import Plan
from ._node import CALL, Node

__all__ = ["Compute"]

_POLL = 0.1  # seconds between two looks at pending signals while the caller waits


class Compute:
    """The shared state of one ``get``: what its tasks read and the caller waits on."""

    GC_GRACE = 1.0  # seconds of waiting before the garbage collector may run again (see get)

    __slots__ = ("_order", "context", "done", "dsk", "error", "last_output", "lock", "outputs",
                 "posttask", "pretask", "state", "stop")

    def __init__(self, plan: Plan, context) -> None:
        self.context = context        # every task runs in a copy of the caller's context
        self.stop = False             # set once: failed, interrupted or abandoned
        self.error: tuple[Node, BaseException] | None = None  # the first failure
        self.done = threading.Event()
        self.outputs = itertools.count()  # drawn by each requested task that finished
        self.last_output = len(plan.outputs) - 1
        self.lock = threading.Lock()  # guards state and serialises callbacks (observed mode)
        self.state: dict = {}
        self.dsk = None
        self.pretask: list = []
        self.posttask: list = []

    # ------------------------------------------------------------ tasks
    def fail(self, node: Node, exc: BaseException) -> None:
        """A task raised ``exc``: keep the first failure, stop, wake the caller."""
        with self.lock:
            if self.error is None and not self.stop:
                self.error = (node, exc)
            self.stop = True
        self.done.set()

    def abandon(self) -> None:
        """The caller gives up (Ctrl-C, or an error of its own, wherever it struck): nothing more
        runs or calls back."""
        with self.lock:
            self.stop = True

    # --------------------------------------------- dask.local's state (observed mode)
    def observe(self, plan: Plan, dsk, cache, pretask: list, posttask: list) -> dict:
        """Build the state dask.local keeps, for callbacks; ``cache`` receives every live value."""
        self.dsk, self.pretask, self.posttask = dsk, pretask, posttask
        tasks = plan.tasks
        dependencies = {}
        dependents: dict = {}
        for n in tasks:
            inputs = {d.key: d for d in _inputs(n)}
            dependencies[n.key] = set(inputs)
            dependents.setdefault(n.key, set())
            for k, d in inputs.items():
                dependents.setdefault(k, set()).add(n.key)
                if d.kind < CALL:  # data, as dask.local does: in the cache from the start
                    cache[k] = d.value
        for n in plan.nodes.values():  # requested data
            n = n.fwd or n
            if n.out and n.kind < CALL:
                cache[n.key] = n.value
        self.state = {
            "dependencies": dependencies,
            "dependents": dependents,
            "waiting": {n.key: {d.key for d in n.deps} for n in tasks if n.deps},
            "waiting_data": {k: set(v) for k, v in dependents.items() if v},
            "cache": cache,
            "ready": [n.key for n in reversed(tasks) if not n.deps],  # the next to start last
            "running": set(),
            "finished": set(),
            "released": set(),
        }
        return self.state

    def started(self, key) -> None:
        """``key`` starts (lock held)."""
        st = self.state
        ready = st["ready"]
        if ready and ready[-1] == key:
            ready.pop()
        else:
            ready.remove(key)
        st["running"].add(key)

    def finished(self, node: Node, value) -> None:
        """``node`` ran (lock held): dask.local's ``finish_task``, releasing what nobody needs now."""
        st = self.state
        key = node.key
        cache = st["cache"]
        cache[key] = value
        waiting, ready = st["waiting"], st["ready"]
        made_ready = []
        for k in st["dependents"][key]:
            s = waiting.get(k)
            if s is not None:
                s.discard(key)
                if not s:
                    del waiting[k]
                    made_ready.append(k)
        if made_ready:
            rank = self._rank
            ready.extend(sorted(made_ready, key=rank, reverse=True))
        waiting_data, released = st["waiting_data"], st["released"]
        for d in {d.key: d for d in _inputs(node)}.values():
            s = waiting_data.get(d.key)
            if s is None:
                continue
            s.discard(key)
            if not s and not d.out:
                del waiting_data[d.key]
                released.add(d.key)
                cache.pop(d.key, None)
                if d.kind >= CALL:
                    d.value = None
        st["finished"].add(key)
        st["running"].discard(key)

    def _rank(self, key) -> int:
        return self._order[key]

    # ------------------------------------------------------------ driving
    def start(self, engine, plan: Plan, observed: bool, priorities: bool) -> None:
        """Push the plan's tasks (see the module doc for Ctrl-C)."""
        if observed:
            self._order = {n.key: i for i, n in enumerate(plan.tasks)}
        if not plan.outputs:
            self.done.set()
            return
        _deferring_sigint(self, _push, engine, plan, observed, priorities)

    def wait(self, rerun: bool, patience_over) -> None:
        """Wait for the requested tasks; raise the first failure.

        With ``rerun`` the failed task runs again in this thread first, on the
        same inputs (none was released: it never finished), so that a debugger
        stops in it; if it raises nothing this time, the original is raised.
        ``patience_over()`` is called once the wait has lasted ``GC_GRACE`` seconds.
        """
        done = self.done
        waited = 0.0
        while not done.wait(_POLL):  # a SIGINT that lands just before the wait blocks would
            waited += _POLL          # otherwise go unnoticed until the compute ends
            if waited >= self.GC_GRACE:
                patience_over()
        if self.error is not None:
            node, exc = self.error
            note = f"depengine.dask: raised by task {node.key!r}"
            if rerun:
                try:
                    self.context.copy().run(node.call)
                except BaseException as again:
                    again.add_note(note + " (run again in the calling thread)")
                    raise
            exc.add_note(note)
            raise exc


def _inputs(n: Node) -> list:
    """The nodes (tasks and data) a task node reads."""
    if n.kind == CALL and n.args is not None:
        found = []
        for _, d in n.refs:
            found.extend(d.nodes() if d.__class__ is not Node else (d,))
        return found
    return list(n.refs)


def _push(c: Compute, engine, plan: Plan, observed: bool, priorities: bool) -> None:
    """Push every task, in plan order.

    Priorities: a task that reads other tasks gets ``len(tasks) + 1 - rank``
    (> 0, earlier first); a task that reads none gets 0, the engine's FIFO
    path, which is cheaper and keeps plan order among them.  Any ready task
    of the first kind starts before any of the second: started branches are
    finished (and their inputs released) before new inputs are made, which
    is what depth first is for.  Priority annotations rank above all that
    (every task then takes the first kind, per annotation rank).
    """
    tasks = plan.tasks
    push = engine.push
    new_var = engine.new_var
    named = profiler.active_recorder() is not None  # names cost a str() per key: only when recorded
    span = len(tasks) + 1
    ranks = _ranks(tasks) if priorities else None
    name = None
    for i, n in enumerate(tasks, 1):
        if c.stop:
            return
        n.c = c
        if named:
            name = n.key if n.key.__class__ is str else str(n.key)
        deps = n.deps
        if ranks is not None:
            prio = (ranks[n.prio] + 1) * span - i
        elif deps:
            prio = span - i
        else:
            prio = 0
        reads = [d.var for d in deps] if deps else ()
        fn = n.run_observed if observed else n.run
        if n.readers:
            v = n.var = new_var(name)
            push(fn, reads, [v], name, prio)
        else:
            push(fn, reads, (), name, prio)


def _ranks(tasks: list) -> dict:
    """Each distinct annotated priority -> its rank (0 for the lowest)."""
    return {p: r for r, p in enumerate(sorted({n.prio for n in tasks}))}


def _deferring_sigint(c: Compute, fn, *args) -> None:
    """Call ``fn(c, *args)`` with Ctrl-C deferred (it stops ``c`` at once, raises after)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        fn(c, *args)
        return
    caught = []

    def defer(signum, frame):
        caught.append(signum)
        c.stop = True  # tasks not started yet return at once

    previous = signal.signal(signal.SIGINT, defer)
    try:
        fn(c, *args)
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
