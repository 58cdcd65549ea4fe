"""A finished recording: ops, waits, the dependencies between ops, and what they say.

A :class:`Trace` comes from a profile (``prof.trace()``) or a saved file
(``Trace.load(path)``).  ``save`` writes Chrome Trace Event Format JSON (one
process per device, one thread per worker or stream, a complete event per op,
flow events from producers to consumers) with depengine's own records in a
``"depengine"`` section, so a saved trace loads back exactly (format 2, one
list per field; format 1 files, one object per record, still load: see
``_trace_write.py``).

Dependencies are rebuilt from the var versions each op saw, by the walker
recorded plans use too (``_edges.py``): the op that wrote version k of a var
precedes every op that read version k (read-after-write); each of those reads
precedes the write of version k+1 (write-after-read); and when nobody read
version k, its writer precedes the next writer directly (write-after-write).

Every derived figure (edges, critical path, statistics, the pictures of
viz/) is computed from one columnar view of the ops, :meth:`Trace.table`
(``_trace_table.py``), built once: a 100 000-op trace is analysed in a
fraction of a second, and a trace read from a format 2 file makes its
:class:`OpRecord` objects only when :attr:`Trace.ops` is first read.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np

from ._trace_table import TraceTable

__all__ = ["Edge", "OpRecord", "Stats", "Trace", "TraceError", "WaitRecord", "atomic_write"]

FORMAT_VERSION = 2  # what save() writes; load() reads 1 and 2 (see _trace_io.py)


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file and the problem."""


@dataclass
class OpRecord:
    """One op as recorded.  Times are nanoseconds from the trace's origin."""

    id: int
    name: str
    engine: int
    device: str
    kind: str
    priority: int
    lane: str
    reads: list[tuple[int, str, int]]   # (var serial, var name, version read)
    writes: list[tuple[int, str, int]]  # (var serial, var name, version produced)
    push: int
    ready: int
    start: int
    end: int
    state: str  # done / failed / skipped
    error: str | None = None
    gpu_end: int | None = None  # when its enqueued GPU work finished (GPU ops)

    @property
    def key(self) -> tuple[int, int]:
        return (self.engine, self.id)

    @property
    def duration(self) -> int:
        return max(0, (self.gpu_end if self.gpu_end is not None else self.end) - self.start)


@dataclass
class WaitRecord:
    thread: str
    what: str
    start: int
    end: int
    outcome: str


@dataclass(frozen=True)
class Edge:
    src: tuple[int, int]  # op key (engine, id)
    dst: tuple[int, int]
    var: str
    version: int
    hazard: str  # what it orders: RAW, WAR or WAW


@dataclass
class Stats:
    """Summary figures of a trace; ``str(stats)`` is the printed table."""

    wall_ns: int
    per_name: dict[str, dict[str, float]]
    per_lane: dict[str, dict[str, float]]
    queue_delay: dict[str, float]
    parallelism: float
    critical_path_ns: int
    critical_path: list[tuple[int, int]] = field(repr=False)

    def __str__(self) -> str:
        ms = 1e-6
        lines = [f"wall {self.wall_ns * ms:.3f} ms, critical path {self.critical_path_ns * ms:.3f} ms "
                 f"({self.critical_path_ns / self.wall_ns:.0%} of wall, {len(self.critical_path)} ops), "
                 f"achieved parallelism {self.parallelism:.2f}" if self.wall_ns else "empty trace"]
        lines.append("")
        lines.append(f"{'op name':28s} {'count':>7s} {'total ms':>10s} {'mean us':>9s} {'min us':>9s} "
                     f"{'max us':>9s} {'p50 us':>9s} {'p99 us':>9s}")
        rows = sorted(self.per_name.items(), key=lambda kv: -kv[1]["total"])
        for name, s in rows:
            us = [s[k] / 1e3 for k in ("mean", "min", "max", "p50", "p99")]
            lines.append(f"{name[:28]:28s} {int(s['count']):7d} {s['total'] * ms:10.3f} "
                         + " ".join(f"{u:9.1f}" for u in us))
        lines.append("")
        lines.append(f"{'worker / stream':28s} {'ops':>7s} {'busy ms':>10s} {'utilisation':>12s}")
        for lane, s in sorted(self.per_lane.items()):
            lines.append(f"{lane[:28]:28s} {int(s['ops']):7d} {s['busy'] * ms:10.3f} "
                         f"{s['utilisation']:12.0%}")
        q = self.queue_delay
        if q:
            lines.append("")
            lines.append(f"queueing delay (ready to start): mean {q['mean'] / 1e3:.1f} us, "
                         f"p50 {q['p50'] / 1e3:.1f} us, p99 {q['p99'] / 1e3:.1f} us, "
                         f"max {q['max'] / 1e3:.1f} us")
        return "\n".join(lines)


def _percentile(sorted_values, p: float) -> float:
    if not len(sorted_values):
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return float(sorted_values[k])


class Trace:
    """Recorded ops and waits, with dependency edges, critical path and statistics.

    Everything derived (edges, critical path, statistics, pictures) is
    computed from one columnar view of the ops, :meth:`table`, built once.
    """

    def __init__(self, ops: list[OpRecord], waits: list[WaitRecord] | None = None,
                 source: str = "<profile>") -> None:
        self._ops: list[OpRecord] | None = sorted(ops, key=attrgetter("engine", "id"))
        self.waits = waits or []
        self.source = source
        self._by_key: dict[tuple[int, int], OpRecord] | None = None
        self._table: TraceTable | None = None
        self._edges: list[Edge] | None = None
        self.origin_ns = 0  # perf_counter_ns() of time 0 in the recording process (0: unknown)

    # ------------------------------------------------------------ building
    @classmethod
    def from_recorder(cls, rec) -> Trace:
        records = rec.records()
        engines: dict[int, int] = {}
        for r in records:
            engines.setdefault(id(r.engine), len(engines))
        gpu_end = {(id(engine), op_id): ns for engine, op_id, ns in rec.gpu}
        t0 = min([r.push for r in records] + [w[2] for w in rec.waits], default=0)
        threads = _thread_names(rec, records)
        ops = []
        for r in records:
            gpu = gpu_end.get((id(r.engine), r.id))
            skipped = r.state == "skipped"
            ops.append(OpRecord(
                id=r.id, name=r.name, engine=engines[id(r.engine)], device=repr(r.device), kind=r.kind,
                priority=r.priority, lane=r.lane or ("(skipped)" if skipped else threads.get(r.thread)),
                reads=[(v.serial, v.name, ver) for v, ver in r.reads],
                writes=[(v.serial, v.name, ver) for v, ver in r.writes],
                push=r.push - t0, ready=r.start - t0, start=r.start - t0, end=r.end - t0,
                state=r.state if r.state in ("failed", "skipped") else "done",
                error=None if r.error is None else f"{type(r.error).__name__}: {r.error}",
                gpu_end=None if gpu is None else gpu - t0,
            ))
        waits = [WaitRecord(rec.threads.get(ident, f"thread-{ident}"), what, s - t0, e - t0, outcome)
                 for ident, what, s, e, outcome in rec.waits]
        trace = cls(ops, waits)
        trace.origin_ns = t0
        trace._derive_ready_times()
        return trace

    @classmethod
    def _checked(cls, ops: list[OpRecord] | None, waits: list[WaitRecord], source: str,
                 table: TraceTable) -> Trace:
        """A trace of records already in key order with their table, or of the table alone (its
        records made when first asked for): what the file reader built."""
        trace = cls([], waits, source)
        trace._ops, trace._table = ops, table
        return trace

    @property
    def ops(self) -> list[OpRecord]:
        """The op records, by (engine, id)."""
        if self._ops is None:
            self._ops = self._table.records()
        return self._ops

    def _derive_ready_times(self) -> None:
        """An op became ready when its last dependency ended (or when it was pushed); a CPU op
        that depends on a GPU op waited for its GPU work."""
        t = self.table()
        src, dst = t.edges()[:2]
        on_cpu = np.array([d.startswith("cpu") for d in t.devices], dtype=bool)[t.device]
        ready = t.push.copy()
        np.maximum.at(ready, dst, np.where(t.has_gpu[src] & on_cpu[dst], t.stop[src], t.end[src]))
        t.ready = np.minimum(ready, t.start)
        for r, value in zip(self.ops, t.ready.tolist(), strict=True):
            r.ready = value

    # ---------------------------------------------------------- structure
    def table(self) -> TraceTable:
        """The ops as numpy columns, by index in :attr:`ops`, with their edges and critical path;
        built on first use (records changed afterwards are not seen)."""
        if self._table is None:
            self._table = TraceTable(self.ops)
        return self._table

    def op_at(self, index: int) -> OpRecord:
        """The record of ``ops[index]``, without making every record of a trace read from a file."""
        return self._ops[index] if self._ops is not None else self._table.record(index)

    def op(self, key: tuple[int, int]) -> OpRecord:
        if self._by_key is None:
            self._by_key = {r.key: r for r in self.ops}
        return self._by_key[key]

    def edges(self) -> list[Edge]:
        """Dependency edges rebuilt from var versions (see the module docstring), by (dst, src, var)."""
        if self._edges is None:
            t = self.table()
            keys, names = t.keys(), t.var_names
            src, dst, var, version, _ = (a.tolist() for a in t.edges())
            var_name = t.var_name.tolist()
            self._edges = [Edge(keys[s], keys[d], names[var_name[v]], k, h) for s, d, v, k, h
                           in zip(src, dst, var, version, t.edge_hazards(), strict=True)]
        return self._edges

    def predecessors(self) -> dict[tuple[int, int], list[tuple[int, int]]]:
        preds: dict[tuple[int, int], list] = defaultdict(list)
        for e in self.edges():
            preds[e.dst].append(e.src)
        return preds

    def critical_path(self) -> list[tuple[int, int]]:
        """The chain of dependent ops with the largest total duration, first op first."""
        t = self.table()
        path = t.critical_path()
        return list(zip(t.engine[path].tolist(), t.id[path].tolist(), strict=True))

    def critical_path_ns(self) -> int:
        t = self.table()
        return int(t.duration[t.critical_path()].sum())

    def wall_ns(self) -> int:
        return self.table().wall_ns()

    def stats(self) -> Stats:
        t = self.table()
        wall = t.wall_ns()
        live = np.flatnonzero(~t.is_state("skipped"))
        per_name = {t.names[code]: {"count": len(ds), "total": float(ds.sum()),
                                    "mean": float(ds.sum()) / len(ds), "min": float(ds[0]),
                                    "max": float(ds[-1]), "p50": _percentile(ds, 50),
                                    "p99": _percentile(ds, 99)}
                    for code, ds in _sorted_groups(t.name[live], t.duration[live])}
        per_lane = {}
        for code, members in _sorted_groups(t.lane[live], live):
            busy = _union_length(t.start[members], t.stop[members])
            per_lane[t.lanes[code]] = {"ops": len(members), "busy": float(busy),
                                       "utilisation": busy / wall if wall else 0.0}
        delays = np.sort(np.maximum(t.start[live] - t.ready[live], 0))
        queue = {}
        if len(delays):
            queue = {"mean": float(delays.sum()) / len(delays), "p50": _percentile(delays, 50),
                     "p99": _percentile(delays, 99), "max": float(delays[-1])}
        busy_total = int(t.duration[live].sum())
        return Stats(wall_ns=wall, per_name=per_name, per_lane=per_lane, queue_delay=queue,
                     parallelism=busy_total / wall if wall else 0.0,
                     critical_path_ns=self.critical_path_ns(), critical_path=self.critical_path())

    # ---------------------------------------------------------- chrome JSON
    def to_chrome(self, version: int = 1) -> dict:
        """Chrome Trace Event Format: ``{"traceEvents": [...], "depengine": {...}}``.

        ``version`` 1 keeps one dict per op record (the easiest to edit); 2,
        what :meth:`save` writes, keeps each field as one list (see ``_trace_io``).
        """
        from ._trace_write import chrome_trace

        return chrome_trace(self, version)

    def save(self, path) -> str:
        """Write the Chrome JSON; the file appears complete or not at all."""
        from ._trace_write import write_trace

        path = str(path)
        write_trace(self, path)
        return path

    @classmethod
    def load(cls, path) -> Trace:
        """Read a trace saved by :meth:`save`; a bad file raises :class:`TraceError` (see trace_io)."""
        from ._trace_io import read_trace

        return read_trace(path)

    @classmethod
    def coerce(cls, trace) -> Trace:
        """A Trace from a Trace, a Profile, or the path of a saved trace."""
        if isinstance(trace, Trace):
            return trace
        if hasattr(trace, "trace") and callable(trace.trace):
            return trace.trace()
        if isinstance(trace, str) or hasattr(trace, "__fspath__"):
            return cls.load(trace)
        raise TypeError(f"trace={trace!r} must be a Trace, a Profile or a trace file path")

    def __len__(self) -> int:
        return len(self._ops) if self._ops is not None else self._table.n

    def __repr__(self) -> str:
        return f"<Trace {self.source} ops={len(self)} waits={len(self.waits)}>"


def _thread_names(rec, records) -> dict[int, str]:
    """Thread ident -> name for every thread that ran a recorded op."""
    names = {t.ident: t.name for t in threading.enumerate()}
    for engine in {id(r.engine): r.engine for r in records}.values():  # engines keep their threads
        names.update((t.ident, t.name) for t in engine.threads())
    names.update(rec.threads)
    for r in records:
        if r.thread is not None and r.thread not in names:
            names[r.thread] = f"thread-{r.thread}"
    return names


def _sorted_groups(keys: np.ndarray, values: np.ndarray):
    """``(key, values of that key sorted)`` per distinct key, keys in order of first appearance."""
    if not len(keys):
        return []
    order = np.lexsort((values, keys))
    k = keys[order]
    first = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    bounds = np.r_[first, len(k)].tolist()
    sorted_values = values[order]
    appears = np.unique(keys, return_index=True)[1]  # first position of each key, in key order
    groups = [(int(k[a]), sorted_values[a:b]) for a, b in itertools.pairwise(bounds)]
    return [groups[g] for g in np.argsort(appears, kind="stable").tolist()]


def _union_length(starts: np.ndarray, ends: np.ndarray) -> int:
    """The length of the union of the intervals ``[starts[i], ends[i]]``."""
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    reach = np.maximum.accumulate(e)
    first = np.r_[True, s[1:] > reach[:-1]]  # an interval that starts after all before it ended
    last = np.r_[first[1:], True]
    return int((reach[last] - s[first]).sum())


@contextmanager
def atomic_write(path, mode: str = "w"):
    """Open a temporary file beside ``path``; on success it replaces ``path``, on error it vanishes."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path)[:40], dir=folder)
    os.chmod(tmp, 0o666 & ~_umask())  # what open() would have made, not mkstemp's private 0600
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting it back at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o22)
    os.umask(mask)
    return mask
