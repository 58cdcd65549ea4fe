"""What the pictures need to know about a run, computed once from a trace.

A :class:`RunModel` numbers the ops (their index in ``trace.ops``), puts
each on a lane (one per worker, GPU stream or copy stream, per engine or
rank), lists every op's dependencies, says what each op waited for (the
dependency that finished last before it became ready), finds the idle gaps
of every lane and the op each gap was waiting for, and marks the
critical path.  Pictures read it; nothing here draws.

Everything is computed on the trace's columns (``Trace.table()``) with
numpy, so a 100 000-op run costs tens of milliseconds here; per-op Python
objects are only touched for the few ops a picture names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from depengine.trace import Stats, Trace

from .style import colors_by_total, lane_order

__all__ = ["EDGE_KINDS", "Gap", "Lane", "RunModel"]

EDGE_KINDS = ("RAW", "WAR", "WAW")


@dataclass
class Lane:
    """One row of the timeline: a worker thread, a GPU stream or a copy stream of one engine."""

    engine: int
    name: str
    device: str
    label: str
    ops: np.ndarray  # op indices, by start time


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
    """Lanes, dependencies, waits, gaps and the critical path of ``trace``, by op index.

    Dependencies are columns sorted by destination: edge ``e`` runs from op
    ``src[e]`` to op ``dst[e]``, orders ``EDGE_KINDS[kind[e]]`` on the var
    named ``table.var_names[var[e]]`` at version ``version[e]``; op ``i``'s
    incoming edges are ``pred_off[i]:pred_off[i + 1]``.  An op's edges to
    itself are left out.
    """

    def __init__(self, trace, stats: Stats | None = None) -> None:
        self.trace = trace = Trace.coerce(trace)
        t = self.table = trace.table()
        self.stats = stats if stats is not None else trace.stats()
        self.critical: list[int] = t.critical_path().tolist()
        self.on_path = set(self.critical)
        self.end = t.stop
        src, dst, var, version, kind = t.edges()
        keep = src != dst
        self.src, self.dst, self.kind, self.version = src[keep], dst[keep], kind[keep], version[keep]
        self.var = t.var_name[var[keep]]
        self.pred_off = np.searchsorted(self.dst, np.arange(t.n + 1))
        self.colors = colors_by_total(dict(zip(t.names, np.bincount(t.name, weights=t.duration,
                                                                     minlength=len(t.names)).tolist(),
                                               strict=True)))
        self.waited_for = self._last_dependencies()
        self.lanes, self.lane_of = self._lanes()
        self.cross = self._crosses()

    def op(self, i: int):
        """The record of op ``i`` (records are made one by one, for the few ops a picture names)."""
        return self.trace.op_at(i)

    def preds(self, i: int) -> range:
        """The indices of op ``i``'s incoming edges."""
        return range(int(self.pred_off[i]), int(self.pred_off[i + 1]))

    def _last_dependencies(self) -> np.ndarray:
        """Per op, the edge whose source finished last before it became ready (-1: it waited for nobody).

        A CPU op that depends on a GPU op waits for its GPU work (``gpu_end``)."""
        t, src, dst = self.table, self.src, self.dst
        waited = np.full(t.n, -1, dtype=np.int64)
        if not len(src):
            return waited
        on_cpu = np.array([d.startswith("cpu") for d in t.devices], dtype=bool)[t.device]
        ends = np.where(t.has_gpu[src] & on_cpu[dst], t.stop[src], t.end[src])
        has = np.flatnonzero(self.pred_off[1:] > self.pred_off[:-1])
        latest = np.zeros(t.n, dtype=np.int64)
        latest[has] = np.maximum.reduceat(ends, self.pred_off[has])
        at_max = np.flatnonzero(ends == latest[dst])
        first = at_max[np.r_[True, dst[at_max][1:] != dst[at_max][:-1]]]  # the first edge of each op's maxima
        waited[dst[first]] = first
        waited[latest < t.push] = -1
        return waited

    def _lanes(self) -> tuple[list[Lane], np.ndarray]:
        t = self.table
        width = len(t.lanes)
        keys, inverse = np.unique(t.engine * width + t.lane, return_inverse=True)
        named = {(k // width, t.lanes[k % width]): n for n, k in enumerate(keys.tolist())}
        order = lane_order(named)
        rank = np.empty(len(order), dtype=np.int64)
        rank[[named[key] for key in order]] = np.arange(len(order))
        lane_of = rank[inverse.ravel()] if len(order) else np.zeros(0, dtype=np.int64)
        by_lane = np.lexsort((np.arange(t.n), t.start, lane_of))
        bounds = np.searchsorted(lane_of[by_lane], np.arange(len(order) + 1))
        multi = len({engine for engine, _ in order}) > 1
        lanes = []
        for n, (engine, name) in enumerate(order):
            idx = by_lane[bounds[n]:bounds[n + 1]]
            label = f"engine {engine} \u00b7 {name}" if multi else name
            lanes.append(Lane(engine, name, t.devices[t.device[idx[0]]], label, idx))
        return lanes, lane_of

    def _crosses(self) -> np.ndarray:
        """Per edge, whether it is drawn as an arrow on the timeline by default: between engines
        (ranks), streams of a GPU, or into or out of a copy."""
        t, s, d = self.table, self.src, self.dst
        copy = np.array([k == "copy" for k in t.kinds], dtype=bool)[t.kind]
        gpu = np.array([lane.startswith("gpu") for lane in t.lanes], dtype=bool)[t.lane]
        special = copy | gpu
        other_lane = self.lane_of[s] != self.lane_of[d]
        return (t.engine[s] != t.engine[d]) | (other_lane & (special[s] | special[d]))

    def gaps(self, min_ns: int | None = None) -> list[Gap]:
        """The idle stretches of every lane longer than ``min_ns`` (default: 0.2% of the run)."""
        t = self.table
        if min_ns is None:
            min_ns = max(1, t.wall_ns() // 500)
        out = []
        for n, lane in enumerate(self.lanes):
            if lane.name == "(skipped)" or len(lane.ops) < 2:
                continue
            busy_until = np.maximum.accumulate(self.end[lane.ops])[:-1]  # before each op but the first
            nxt = lane.ops[1:]
            for k in np.flatnonzero(t.start[nxt] - busy_until > min_ns).tolist():
                i = int(nxt[k])
                edge = int(self.waited_for[i])
                out.append(Gap(n, int(busy_until[k]), int(t.start[i]), i,
                               None if edge < 0 else int(self.src[edge])))
        return out

    def topo_order(self) -> np.ndarray:
        """Op indices with every op after its dependencies (push order breaks any cycle a trace has)."""
        return self.table.topo_order()

    def __len__(self) -> int:
        return self.table.n
