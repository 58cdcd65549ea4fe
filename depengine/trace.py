"""A finished recording: ops, waits, the dependencies between ops, and what they say.

A :class:`Trace` comes from a profile (``prof.trace()``) or a saved file
(``Trace.load(path)``).  ``save`` writes Chrome Trace Event Format JSON (one
process per device, one thread per worker or stream, a complete event per op,
flow events from producers to consumers) with depengine's own records in a
``"depengine"`` section, so a saved trace loads back exactly.

Dependencies are rebuilt from the var versions each op saw, by the walker
recorded plans use too (``_edges.py``): the op that wrote version k of a var
precedes every op that read version k (read-after-write); each of those reads
precedes the write of version k+1 (write-after-read); and when nobody read
version k, its writer precedes the next writer directly (write-after-write).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from ._edges import dependency_edges

__all__ = ["Edge", "OpRecord", "Stats", "Trace", "TraceError", "WaitRecord", "atomic_write"]

FORMAT_VERSION = 1


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


def _percentile(sorted_values: list[int], p: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return float(sorted_values[k])


class Trace:
    """Recorded ops and waits, with dependency edges, critical path and statistics."""

    def __init__(self, ops: list[OpRecord], waits: list[WaitRecord] | None = None,
                 source: str = "<profile>") -> None:
        self.ops = sorted(ops, key=lambda r: (r.engine, r.id))
        self.waits = waits or []
        self.source = source
        self._by_key = {r.key: r for r in self.ops}
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

    def _derive_ready_times(self) -> None:
        """An op became ready when its last dependency ended (or when it was pushed)."""
        preds = self.predecessors()
        for r in self.ops:
            ready = r.push
            for p in preds.get(r.key, ()):
                q = self._by_key[p]
                gpu_wait = q.gpu_end is not None and r.device.startswith("cpu")
                ready = max(ready, q.gpu_end if gpu_wait else q.end)
            r.ready = min(max(ready, r.push), r.start)

    # ---------------------------------------------------------- structure
    def op(self, key: tuple[int, int]) -> OpRecord:
        return self._by_key[key]

    def edges(self) -> list[Edge]:
        """Dependency edges rebuilt from var versions (see the module docstring)."""
        if self._edges is not None:
            return self._edges
        names = {(r.engine, serial): name for r in self.ops for serial, name, _ in (*r.reads, *r.writes)}
        accesses = ((r.key, [((r.engine, serial), ver) for serial, _, ver in r.reads],
                     [((r.engine, serial), ver) for serial, _, ver in r.writes]) for r in self.ops)
        edges = [Edge(src, dst, names[var], version, hazard)
                 for src, dst, var, version, hazard in dependency_edges(accesses)]
        edges.sort(key=lambda e: (e.dst, e.src, e.var))
        self._edges = edges
        return edges

    def predecessors(self) -> dict[tuple[int, int], list[tuple[int, int]]]:
        preds: dict[tuple[int, int], list] = defaultdict(list)
        for e in self.edges():
            if e.src in self._by_key:
                preds[e.dst].append(e.src)
        return preds

    def critical_path(self) -> list[tuple[int, int]]:
        """The chain of dependent ops with the largest total duration, first op first."""
        preds = self.predecessors()
        best: dict[tuple[int, int], int] = {}
        via: dict[tuple[int, int], tuple[int, int] | None] = {}
        for r in self.ops:  # push order is a topological order of the edges
            p_best, p_key = 0, None
            for p in preds.get(r.key, ()):
                if best.get(p, 0) > p_best:
                    p_best, p_key = best[p], p
            best[r.key] = p_best + r.duration
            via[r.key] = p_key
        if not best:
            return []
        key: tuple[int, int] | None = max(best, key=best.__getitem__)
        path = []
        while key is not None:
            path.append(key)
            key = via[key]
        return path[::-1]

    def critical_path_ns(self) -> int:
        return sum(self._by_key[k].duration for k in self.critical_path())

    def wall_ns(self) -> int:
        if not self.ops:
            return 0
        return max(r.gpu_end or r.end for r in self.ops) - min(r.push for r in self.ops)

    def stats(self) -> Stats:
        wall = self.wall_ns()
        per_name: dict[str, dict[str, float]] = {}
        groups: dict[str, list[int]] = defaultdict(list)
        for r in self.ops:
            if r.state != "skipped":
                groups[r.name].append(r.duration)
        for name, ds in groups.items():
            ds.sort()
            per_name[name] = {"count": len(ds), "total": float(sum(ds)), "mean": statistics.fmean(ds),
                              "min": float(ds[0]), "max": float(ds[-1]),
                              "p50": _percentile(ds, 50), "p99": _percentile(ds, 99)}
        lanes: dict[str, list[OpRecord]] = defaultdict(list)
        for r in self.ops:
            if r.state != "skipped":
                lanes[r.lane].append(r)
        per_lane = {}
        for lane, rs in lanes.items():
            busy = _union_length([(r.start, r.gpu_end or r.end) for r in rs])
            per_lane[lane] = {"ops": len(rs), "busy": float(busy),
                              "utilisation": busy / wall if wall else 0.0}
        delays = sorted(max(0, r.start - r.ready) for r in self.ops if r.state != "skipped")
        queue = {}
        if delays:
            queue = {"mean": statistics.fmean(delays), "p50": _percentile(delays, 50),
                     "p99": _percentile(delays, 99), "max": float(delays[-1])}
        busy_total = sum(r.duration for r in self.ops if r.state != "skipped")
        path = self.critical_path()
        return Stats(wall_ns=wall, per_name=per_name, per_lane=per_lane, queue_delay=queue,
                     parallelism=busy_total / wall if wall else 0.0,
                     critical_path_ns=sum(self._by_key[k].duration for k in path), critical_path=path)

    # ---------------------------------------------------------- chrome JSON
    def to_chrome(self) -> dict:
        """Chrome Trace Event Format: ``{"traceEvents": [...], "depengine": {...}}``."""
        events: list[dict] = []
        pids: dict[tuple[int, str], int] = {}
        tids: dict[tuple[int, str], int] = {}
        multi = len({r.engine for r in self.ops}) > 1

        def pid_of(engine: int, device: str) -> int:
            key = (engine, device)
            if key not in pids:
                pids[key] = len(pids) + 1
                label = f"engine {engine} {device}" if multi else device
                events.append({"ph": "M", "name": "process_name", "pid": pids[key], "tid": 0,
                               "args": {"name": label}})
                events.append({"ph": "M", "name": "process_sort_index", "pid": pids[key], "tid": 0,
                               "args": {"sort_index": pids[key]}})
            return pids[key]

        def tid_of(pid: int, lane: str) -> int:
            key = (pid, lane)
            if key not in tids:
                tids[key] = len(tids) + 1
                events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tids[key],
                               "args": {"name": lane}})
            return tids[key]

        where: dict[tuple[int, int], tuple[int, int]] = {}
        for r in self.ops:
            pid = pid_of(r.engine, r.device)
            tid = tid_of(pid, r.lane)
            where[r.key] = (pid, tid)
            end = r.gpu_end if r.gpu_end is not None else r.end
            events.append({
                "ph": "X", "name": r.name, "cat": r.kind, "pid": pid, "tid": tid,
                "ts": r.start / 1e3, "dur": max(end - r.start, 0) / 1e3,
                "args": {"id": r.id, "state": r.state, "priority": r.priority,
                         "reads": [f"{n}@v{v}" for _, n, v in r.reads],
                         "writes": [f"{n}@v{v}" for _, n, v in r.writes],
                         "queue_delay_us": max(0, r.start - r.ready) / 1e3,
                         **({"error": r.error} if r.error else {})},
            })
        for n, e in enumerate(self.edges()):
            if e.src not in where or e.dst not in where:
                continue
            src, dst = self._by_key[e.src], self._by_key[e.dst]
            (spid, stid), (dpid, dtid) = where[e.src], where[e.dst]
            name = f"{e.var}@v{e.version} {e.hazard}"
            events.append({"ph": "s", "id": n, "name": name, "cat": "dependency", "pid": spid, "tid": stid,
                           "ts": (src.gpu_end or src.end) / 1e3 - 0.001})
            events.append({"ph": "f", "bp": "e", "id": n, "name": name, "cat": "dependency",
                           "pid": dpid, "tid": dtid, "ts": dst.start / 1e3})
        host = None
        for w in self.waits:
            if host is None:
                host = len(pids) + 1
                events.append({"ph": "M", "name": "process_name", "pid": host, "tid": 0,
                               "args": {"name": "waiting threads"}})
            tid = tid_of(host, w.thread)
            events.append({"ph": "X", "name": w.what, "cat": "wait", "pid": host, "tid": tid,
                           "ts": w.start / 1e3, "dur": max(w.end - w.start, 0) / 1e3,
                           "args": {"outcome": w.outcome}})
        return {
            "traceEvents": events,
            "displayTimeUnit": "ms",
            "depengine": {"format": FORMAT_VERSION,
                          "ops": [asdict(r) for r in self.ops],
                          "waits": [asdict(w) for w in self.waits]},
        }

    def save(self, path) -> str:
        """Write the Chrome JSON; the file appears complete or not at all."""
        path = str(path)
        with atomic_write(path) as f:
            json.dump(self.to_chrome(), f)
        return path

    @classmethod
    def load(cls, path) -> Trace:
        """Read a trace saved by :meth:`save`; a bad file raises :class:`TraceError` (see trace_io)."""
        from ._trace_io import read_trace

        return cls(*read_trace(path), source=str(path))

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
        return len(self.ops)

    def __repr__(self) -> str:
        return f"<Trace {self.source} ops={len(self.ops)} waits={len(self.waits)}>"


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


def _union_length(intervals: list[tuple[int, int]]) -> int:
    total = 0
    cur_s = cur_e = None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


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
