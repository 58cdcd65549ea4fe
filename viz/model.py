"""What the pictures need to know about a run, computed once from a trace.

A :class:`RunModel` numbers the ops (their index in ``trace.ops``), puts
each on a lane (one per worker, GPU stream or copy stream, per engine or
rank), lists every op's dependencies, says what each op waited for (the
dependency that finished last before it became ready), finds the idle gaps
of every lane and the op each gap was waiting for, and marks the
critical path.  Pictures read it; nothing here draws.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from depengine.trace import Stats, Trace

from .style import lane_order

__all__ = ["EDGE_KINDS", "Gap", "Lane", "RunModel"]

EDGE_KINDS = ("RAW", "WAR", "WAW")


@dataclass
class Lane:
    """One row of the timeline: a worker thread, a GPU stream or a copy stream of one engine."""

    engine: int
    name: str
    device: str
    label: str
    ops: list[int]  # op indices, by start time


@dataclass
class Gap:
    """A stretch of a lane with nothing running, and why: the op that ran next and what it waited for."""

    lane: int
    start: int
    end: int
    next_op: int
    waited_for: int | None  # op index, None when the next op only waited for its push

    @property
    def duration(self) -> int:
        return self.end - self.start


class RunModel:
    """Lanes, dependencies, waits, gaps and the critical path of ``trace``, by op index."""

    def __init__(self, trace, stats: Stats | None = None) -> None:
        self.trace = trace = Trace.coerce(trace)
        self.ops = ops = trace.ops
        self.index = {r.key: i for i, r in enumerate(ops)}
        self.stats = stats if stats is not None else trace.stats()
        self.critical = [self.index[k] for k in self.stats.critical_path if k in self.index]
        self.on_path = set(self.critical)
        self.end = [r.gpu_end if r.gpu_end is not None else r.end for r in ops]
        # edges as (src, dst, kind index, var name, version), by op index
        self.edges: list[tuple[int, int, int, str, int]] = []
        self.preds: list[list[int]] = [[] for _ in ops]
        kind_index = {k: n for n, k in enumerate(EDGE_KINDS)}
        index = self.index
        for e in trace.edges():
            s, d = index.get(e.src), index.get(e.dst)
            if s is None or d is None or s == d:
                continue
            self.edges.append((s, d, kind_index[e.hazard], e.var, e.version))
            self.preds[d].append(len(self.edges) - 1)
        self.waited_for = [self._last_dependency(i) for i in range(len(ops))]
        self.lanes = self._lanes()
        self.lane_of = [0] * len(ops)
        for n, lane in enumerate(self.lanes):
            for i in lane.ops:
                self.lane_of[i] = n

    def _last_dependency(self, i: int) -> int | None:
        """The edge whose source finished last before op ``i`` became ready (None: it waited for nobody)."""
        best, best_end = None, None
        r = self.ops[i]
        for n in self.preds[i]:
            src = self.edges[n][0]
            q = self.ops[src]
            end = q.gpu_end if q.gpu_end is not None and r.device.startswith("cpu") else q.end
            if best_end is None or end > best_end:
                best, best_end = n, end
        if best_end is None or best_end < r.push:
            return None
        return best

    def _lanes(self) -> list[Lane]:
        members: dict[tuple[int, str], list[int]] = defaultdict(list)
        for i, r in enumerate(self.ops):
            members[(r.engine, r.lane)].append(i)
        multi = len({k[0] for k in members}) > 1
        lanes = []
        for engine, name in lane_order(members):
            idx = sorted(members[(engine, name)], key=lambda i: (self.ops[i].start, i))
            device = self.ops[idx[0]].device
            label = f"engine {engine} \u00b7 {name}" if multi else name
            lanes.append(Lane(engine, name, device, label, idx))
        return lanes

    def crosses(self, edge: tuple) -> bool:
        """Whether an edge is drawn as an arrow on the timeline by default: between engines
        (ranks), streams of a GPU, or into or out of a copy."""
        s, d = edge[0], edge[1]
        a, b = self.ops[s], self.ops[d]
        if a.engine != b.engine:
            return True
        if self.lane_of[s] == self.lane_of[d]:
            return False
        return (a.kind == "copy" or b.kind == "copy" or a.lane.startswith("gpu") or b.lane.startswith("gpu"))

    def gaps(self, min_ns: int | None = None) -> list[Gap]:
        """The idle stretches of every lane longer than ``min_ns`` (default: 0.2% of the run)."""
        wall = self.trace.wall_ns()
        if min_ns is None:
            min_ns = max(1, wall // 500)
        out = []
        for n, lane in enumerate(self.lanes):
            if lane.name == "(skipped)":
                continue
            busy_until = None
            for i in lane.ops:
                r = self.ops[i]
                if busy_until is not None and r.start - busy_until > min_ns:
                    edge = self.waited_for[i]
                    out.append(Gap(n, busy_until, r.start, i, None if edge is None else self.edges[edge][0]))
                busy_until = max(busy_until or r.start, self.end[i])
        return out

    def topo_order(self) -> list[int]:
        """Op indices with every op after its dependencies (push order breaks any cycle a trace has)."""
        n = len(self.ops)
        waiting = [0] * n
        succs: list[list[int]] = [[] for _ in range(n)]
        for s, d, *_ in self.edges:
            waiting[d] += 1
            succs[s].append(d)
        ready = [i for i in range(n - 1, -1, -1) if not waiting[i]]
        order, placed = [], [False] * n
        nxt = 0
        while len(order) < n:
            if not ready:  # a cycle: take the earliest op not yet placed
                while placed[nxt]:
                    nxt += 1
                ready.append(nxt)
                waiting[nxt] = 0
            i = ready.pop()
            if placed[i]:
                continue
            placed[i] = True
            order.append(i)
            for d in succs[i]:
                waiting[d] -= 1
                if waiting[d] == 0 and not placed[d]:
                    ready.append(d)
        return order

    def __len__(self) -> int:
        return len(self.ops)
