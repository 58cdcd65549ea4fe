"""Recording ops once and replaying them fast: graphs and plans.

``with eng.record() as g:`` captures the ops the recording thread pushes
(running them too unless ``execute=False``); ``g.compile()`` turns them into
a :class:`Plan`: a precomputed DAG of the recorded ops, optimised, whose
``run()`` pushes one composite op that reads the plan's external inputs and
writes everything it writes.  Inside a run, dependencies between recorded ops
are successor lists and counters computed at compile time: no var queues.

Optimisations, each switchable in ``compile``:

- ``prune``: drop an op declared ``pure`` whose every write is overwritten
  later in the plan before anyone reads it (a dead store).
- ``fuse``: let registered fusers replace groups of ops by one op (ops/
  fuses elementwise array ops into one kernel that skips intermediates no
  one can observe).
- ``bulk``: run each chain of ops that would run back to back (one
  successor, whose only predecessor it is) as one dispatch, and group the
  chains that start on one dependency level into at most one dispatch per
  worker (they are independent: the level keeps its parallelism).

A plan whose ops are all synchronous compute ops on one GPU replays on one
stream instead: its first run enqueues the ops' work as pushed ops would,
its second captures that work as a CUDA graph (the simulated runtime records
it and replays it item by item), and later runs launch the graph.  A plan
mixing devices, or holding async or copy ops, is pushed op by op.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

from ._composite import Outcome, run_members, seed_failures
from ._device import cpu
from ._edges import dependency_edges, pushed_in_order
from ._errors import DepengineError
from ._op import Op
from ._plan_run import Chunk, Run, native_plan, new_member, topological

__all__ = ["Graph", "Plan", "register_fuser"]

_CPU = cpu()
_fusers: list[tuple] = []  # (fuser, groups or None)


def register_fuser(fuser: Callable, groups: Callable | None = None) -> None:
    """``fuser(specs) -> (fn, name) | None``: one function doing the work of a group of recorded ops.

    By default the fuser is offered the chains of ops that run back to back.
    With ``groups(specs)`` (lists of indices in push order) it is offered
    those groups instead, as ``fuser(specs, read_elsewhere)`` with the vars
    that the plan's other ops read.  A group runs where its last member did;
    one whose members cannot all move there without reordering a conflict is
    not offered.
    """
    _fusers.append((fuser, groups))


def _movable(specs, group) -> bool:
    """Whether running ``group`` at the place of its last member keeps the order of every conflict."""
    members, last = set(group), group[-1]
    for i in group[:-1]:
        writes, reads = set(specs[i].writes), set(specs[i].reads)
        for j in range(i + 1, last):
            o = specs[j]
            if j not in members and not (writes.isdisjoint(o.reads) and writes.isdisjoint(o.writes)
                                         and reads.isdisjoint(o.writes)):
                return False
    return True


class _Spec:
    """A recorded push: everything needed to push it again."""

    __slots__ = ("always_run", "device", "fn", "is_async", "kind", "name", "op", "priority", "pure", "reads",
                 "writes")

    def __init__(self, op: Op, fn) -> None:
        self.op = op  # the pushed op (its ``meta`` may be set after the push returns)
        self.fn = fn
        self.reads, self.writes = op.reads, op.writes
        self.name, self.priority, self.always_run = op._name, op.priority, op.always_run
        self.is_async, self.device, self.kind = op.is_async, op.device, op.kind
        self.pure = False

    @property
    def meta(self):
        return getattr(self.op, "meta", None)


class Graph:
    """Ops captured by ``Engine.record()``; ``compile()`` makes a :class:`Plan` of them."""

    def __init__(self, engine, execute: bool) -> None:
        self.engine = engine
        self.execute = execute
        self.thread = threading.get_ident()
        self.specs: list[_Spec] = []
        self.new_vars: list = []
        self.closed = False

    def add(self, op: Op, pure: bool) -> None:
        """Record a push (the engine calls this while ``record()`` captures this thread's pushes)."""
        spec = _Spec(op, op.fn)
        spec.pure = pure
        self.specs.append(spec)

    def __len__(self) -> int:
        return len(self.specs)

    def compile(self, *, prune: bool = True, fuse: bool = True, bulk: bool = True) -> Plan:
        if not self.closed:
            raise DepengineError("compile() the graph after its record() block has ended")
        return Plan(self, prune=prune, fuse=fuse, bulk=bulk)

    def __repr__(self) -> str:
        return f"<Graph ops={len(self.specs)} {'recording' if not self.closed else 'done'}>"


def _dependencies(specs) -> list[set[int]]:
    """Predecessors of each spec under the engine's rules (see ``_edges.py``)."""
    preds: list[set[int]] = [set() for _ in specs]
    for src, dst, _, _, _ in dependency_edges(pushed_in_order((s.reads, s.writes) for s in specs)):
        preds[dst].add(src)
    return preds


def _dead_stores(specs) -> set[int]:
    """Pure specs whose every write is overwritten before anyone reads it."""
    dead = set()
    for i, s in enumerate(specs):
        if not s.pure or not s.writes:
            continue
        pending = set(s.writes)
        for t in specs[i + 1:]:
            if pending & set(t.reads):
                break  # someone reads a value this op wrote
            pending -= set(t.writes)
            if not pending:
                dead.add(i)
                break
    return dead


def _chains(n: int, preds: list[set[int]]) -> list[list[int]]:
    """Maximal chains: each link the only successor of the previous, which is its only predecessor."""
    succs: list[list[int]] = [[] for _ in range(n)]
    for i, p in enumerate(preds):
        for j in p:
            succs[j].append(i)
    chains, seen = [], set()
    for i in range(n):
        if i in seen:
            continue
        if len(preds[i]) == 1 and len(succs[next(iter(preds[i]))]) == 1:
            continue  # a link inside a chain: its head starts it
        chain = [i]
        seen.add(i)
        while len(succs[chain[-1]]) == 1 and len(preds[succs[chain[-1]][0]]) == 1:
            chain.append(succs[chain[-1]][0])
            seen.add(chain[-1])
        chains.append(chain)
    return chains


def _by_level(chains: list[list[int]], preds: list[set[int]], workers: int) -> list[list[int]]:
    """Chains whose heads share a level run as at most ``workers`` dispatches per level.

    The level of an op is the length of the longest dependency path to it;
    chains whose heads are on one level have no edge between them, so each
    dispatch runs its chains one after another and the dispatches of a level
    run in parallel.  That keeps the parallelism a level has (up to one
    dispatch per worker) and drops the per-op dispatch cost.  Chains are
    dealt longest first to the dispatch with the fewest ops so far, so that
    two long chains of a level do not end up one behind the other.
    """
    level: list[int] = []
    for p in preds:  # push order is topological
        level.append(1 + max((level[j] for j in p), default=-1))
    by_level: dict[int, list[list[int]]] = {}
    for chain in chains:
        by_level.setdefault(level[chain[0]], []).append(chain)
    groups = []
    for lvl in sorted(by_level):
        chs = by_level[lvl]
        k = min(workers, len(chs))
        if len({len(ch) for ch in chs}) == 1:  # chains alike: neighbours in push order stay together
            size = -(-len(chs) // k)
            groups.extend(sorted(i for ch in chs[start:start + size] for i in ch)
                          for start in range(0, len(chs), size))
            continue
        members: list[list[int]] = [[] for _ in range(k)]
        loads = [0] * k
        for ch in sorted(chs, key=len, reverse=True):  # longest first, each to the lightest dispatch
            g = loads.index(min(loads))
            members[g].extend(ch)
            loads[g] += len(ch)
        groups.extend(sorted(m) for m in members)
    return groups


class Plan:
    """A compiled recording.  ``run()`` replays it; ``viz.plan_graph(plan)`` draws it."""

    def __init__(self, graph: Graph, *, prune: bool, fuse: bool, bulk: bool) -> None:
        self.engine = graph.engine
        specs = list(graph.specs)
        self.recorded = len(specs)
        self.pruned = 0
        if prune:
            dead = _dead_stores(specs)
            while dead:
                self.pruned += len(dead)
                specs = [s for i, s in enumerate(specs) if i not in dead]
                dead = _dead_stores(specs)
        self.mode, self.device, self.why_imperative = _mode(specs)
        self.cuda_graph = None      # gpu mode: the captured graph, once captured
        self.why_no_graph = None    # gpu mode: why runs stay eager stream replays
        self.graph_launches = 0
        self._eager_runs = 0
        self.fused = 0
        if fuse and self.mode == "plan" and _fusers:
            specs = self._fuse(specs)
        self.specs = specs
        preds = _dependencies(specs)
        groups = [[i] for i in range(len(specs))]
        if self.mode == "gpu":  # one stream: one dispatch in push order
            groups = [list(range(len(specs)))] if specs else []
        elif bulk:
            groups = _by_level(_chains(len(specs), preds), preds, self.engine.options.workers)
        self.bulked = sum(len(g) - 1 for g in groups)
        group_of = {i: g for g, members in enumerate(groups) for i in members}
        self.chunks = groups
        self.npred = [len({group_of[p] for i in members for p in preds[i]} - {g})
                      for g, members in enumerate(groups)]
        succ_sets: list[set[int]] = [set() for _ in groups]
        for g, members in enumerate(groups):
            for i in members:
                for p in preds[i]:
                    if group_of[p] != g:
                        succ_sets[group_of[p]].add(g)
        self.succ = [sorted(s) for s in succ_sets]
        self.roots = [g for g, n in enumerate(self.npred) if n == 0]
        self.order = topological(self)  # the chunks one after another, for a run on one thread
        # the plan as one op: its external inputs and everything it writes
        counts: dict = {}
        written = set()
        for s in specs:
            for v in s.writes:
                counts[v] = counts.get(v, 0) + 1
                written.add(v)
        self.writes = tuple(counts)
        self.wcounts = counts
        self.reads = tuple(dict.fromkeys(v for s in specs for v in s.reads if v not in written))
        if not self.writes:  # runs of a read-only plan must not overlap: they share state
            self.token = self.engine.new_var("plan")
            self.writes = (self.token,)
            self.wcounts = {self.token: 1}
        # members: one Op per recorded op, reused by every run; one item per chunk
        self.members = [self._member(s, i) for i, s in enumerate(specs)]
        self.chunk_members = [[self.members[i] for i in members] for members in groups]
        self.items = [Chunk(self, g) for g in range(len(groups))]
        for item in self.items:
            item.succ = self.succ[item.g]
        self.current: Run | None = None
        self.native = native_plan(self)  # all members native on the compiled core: runs in C

    def _fuse(self, specs):
        for fuser, grouper in _fusers:
            fused = {}
            for group in grouper(specs) if grouper else _chains(len(specs), _dependencies(specs)):
                if len(group) < 2 or not _movable(specs, group):
                    continue
                members, inside = [specs[k] for k in group], set(group)
                made = fuser(members, {v for i, o in enumerate(specs) if i not in inside for v in o.reads}) \
                    if grouper else fuser(members)
                if made is not None:
                    fused[group[-1]] = (members, made)
            gone = {id(m) for members, _ in fused.values() for m in members}
            out = []
            for i, s in enumerate(specs):
                if i in fused:  # the group runs where its last member did
                    members, (fn, name) = fused[i]
                    written = tuple(dict.fromkeys(v for m in members for v in m.writes))
                    reads = tuple(dict.fromkeys(v for m in members for v in m.reads if v not in written))
                    top = max(m.priority for m in members)
                    out.append(_Spec(new_member(fn, reads, written, name, top), fn))
                    self.fused += len(members) - 1
                elif id(s) not in gone:
                    out.append(s)
            specs = out
        return specs

    def _member(self, s: _Spec, index: int) -> Op:
        m = new_member(s.fn, s.reads, s.writes, s.name, s.priority, s.always_run, index)
        m.device = self.device
        return m

    # ------------------------------------------------------------------ run
    def run(self, engine=None) -> None:
        """Replay the plan; returns at once, ordered with every other op on the engine."""
        eng = self.engine
        if engine is not None and engine is not eng:
            raise DepengineError(f"this plan was recorded on {eng!r}; it cannot run on {engine!r}")
        if self.mode == "imperative":
            for s in self.specs:
                push = eng.push_async if s.is_async else eng.push
                push(s.fn, reads=s.reads, writes=s.writes, name=s.name, priority=s.priority,
                     always_run=s.always_run, device=None if s.device == _CPU else s.device, kind=s.kind)
            return
        if self.mode == "gpu":
            eng.push(self._gpu_run, self.reads, self.writes, f"plan({len(self.members)} ops)", 0, True,
                     self.device, "normal", False, False, None, self.wcounts)
            return
        eng.push(self._start, self.reads, self.writes, f"plan({len(self.members)} ops)", 0, True,
                 None, "async", False, True, None, self.wcounts)

    def _gpu_run(self, ctx) -> None:
        """A GPU plan runs on one stream: eagerly first, then as one captured graph launch.

        The first run enqueues every member's work as pushed ops would (it
        allocates outputs and compiles kernels); the second captures the
        members' work into a graph; later runs launch that graph.  Runs that
        start from failed vars, and plans whose capture failed, replay eagerly
        under the usual failure rules.
        """
        members = self.members
        for m in members:
            m.stream = ctx.stream
        eng = self.engine
        failures = seed_failures(ctx, set(self.reads) | set(self.writes)) if eng._failed_vars else {}
        if failures or self.why_no_graph is not None or not self._eager_runs:
            self._eager_runs += 1
            self._eager(ctx, members, failures)
            return
        rt = eng.gpu_runtime(self.device)
        if self.cuda_graph is None:
            rt.begin_capture(ctx.stream)
            try:
                for m in members:
                    m.fn(m)
                self.cuda_graph = rt.end_capture(ctx.stream)
                release = weakref.finalize(self, rt.destroy_graph, self.cuda_graph)
                release.atexit = False  # at exit the driver may be gone already
            except Exception as exc:
                rt.abort_capture(ctx.stream)
                self.why_no_graph = f"capture failed: {type(exc).__name__}: {exc}"
                self._eager(ctx, members, failures)
                return
        rt.launch_graph(self.cuda_graph, ctx.stream)
        self.graph_launches += 1

    def _eager(self, ctx, members, failures: dict) -> None:
        outcome = Outcome()
        run_members(members, failures, outcome)
        outcome.failures = {v: failures[v] for v in self.writes if failures.get(v) is not None}
        if outcome.worth_reporting():
            ctx._outcome = outcome

    def _start(self, ctx, done) -> None:
        """The plan op runs: start the chunks with no predecessor (on the engine's workers)."""
        eng = self.engine
        prof = eng._prof
        members = self.members
        if prof is not None:  # fresh members, so each run's ops are recorded on their own
            members = [self._profiled_member(m, ctx) for m in members]
        failures = seed_failures(ctx, set(self.reads) | set(self.writes)) if eng._failed_vars else {}
        run = self.current = Run(self, ctx, members, failures, done, prof)
        submit = eng._plan_submit()
        native = self.native if prof is None and not failures else None
        if submit is None or len(self.chunks) <= 1:  # (a plan of no op finishes at once)
            if native is None:
                run.serial()
            else:  # every member on this thread, without the GIL
                native.serial(run)
                run.finish()
            return
        if native is not None:  # the chunks run and count down in the core
            native.start(run)
            return
        for g in self.roots:
            submit(self.items[g])

    def _profiled_member(self, m: Op, ctx) -> Op:
        copy = new_member(m.fn, m.reads, m.writes, m._name, m.priority, m.always_run,
                           self.engine._take_ids(1))
        copy._p_engine = self.engine
        copy._p_lane = None
        copy._p_push = getattr(ctx, "_p_push", 0)
        return copy

    def edges(self) -> list[tuple]:
        """``(src, dst, var, version, hazard)`` between the plan's ops (indices into ``specs``)."""
        return dependency_edges(pushed_in_order((s.reads, s.writes) for s in self.specs))

    def __repr__(self) -> str:
        return (f"<Plan ops={len(self.members)} (recorded {self.recorded}, pruned {self.pruned}, "
                f"fused {self.fused}) chunks={len(self.chunks)} mode={self.mode}>")


def _mode(specs) -> tuple[str, object, str | None]:
    """How a plan replays: ``plan`` (CPU DAG), ``gpu`` (one stream, captured graph) or ``imperative``."""
    if all(not s.is_async and s.device == _CPU and s.kind in ("normal", "prioritized") for s in specs):
        return "plan", _CPU, None
    first = specs[0].device
    if all(not s.is_async and s.device == first and s.kind == "normal" for s in specs):
        return "gpu", first, None
    allowed = ("normal", "prioritized") if first == _CPU else ("normal",)
    for s in specs:  # find the op that rules the plan out
        if s.is_async or s.kind not in allowed or s.device != first:
            why = f"op {s.name!r} is {'async' if s.is_async else s.kind} on {s.device}"
            break
    return "imperative", None, (f"{why}: a plan replays synchronous CPU ops as a DAG, or compute ops "
                                f"all on one GPU as a graph; this one is pushed op by op")
