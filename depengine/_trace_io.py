"""Reading and writing trace files safely.

A trace file is outside data: :func:`read_trace` parses it against a fixed
schema (msgspec decodes the JSON straight into the record dataclasses, so
no second copy of the file lives as dicts and lists), checks every value a
picture relies on, and raises :class:`TraceError` naming the file, the
place and the problem; it evaluates nothing.  It rejects

- files that are empty, truncated, not JSON, or JSON of another kind
  (no ``"depengine"`` section, another format version);
- records of the wrong shape or type (a string id, a bool time, a missing
  field), integers outside 64 bits, unknown op states;
- impossible records: negative durations, two ops with one id;
- a Chrome part that does not match: unknown event phases, negative
  durations, flow arrows whose ends no op encloses (a flow to a missing op),
  unpaired flows, a slice count that differs from the records;
- nesting deeper than the format has.

Times must lie within 2**62 ns (146 years) of the trace's origin, so that
the difference of two of them fits in 64 bits.  The checks run on the
columns of the :class:`~depengine._trace_table.TraceTable` that the trace
then keeps, so the file's numbers are converted once.  The decoder makes a
million objects that form no cycles: the garbage collector is paused while
it runs (collecting them as they are made cost a third of the decode).

:func:`write_trace` writes what :func:`read_trace` reads (with msgspec, the
records encoded straight from their dataclasses); :func:`atomic_write` is
how every trace, picture and report is written: to a temporary file beside
the target, renamed over it only once complete, so a failure leaves no
half-written output.
"""

from __future__ import annotations

import gc
import json
import mmap
import os
from contextlib import contextmanager
from operator import attrgetter

import msgspec
import numpy as np

from ._edges import HAZARDS
from ._trace_table import TraceTable
from .trace import FORMAT_VERSION, OpRecord, Trace, TraceError, WaitRecord, atomic_write

__all__ = ["STATES", "chrome_trace", "read_trace", "write_trace"]

STATES = ("done", "failed", "skipped")
PHASES = ("M", "X", "s", "f")  # the Chrome event phases a depengine trace contains
INT64 = 2**63
TIME_LIMIT = 2**62  # ns from the origin: the difference of two times fits in 64 bits
TIMES = ("push", "ready", "start", "end")
FLOW_SLACK_US = 0.01  # flows start 1 ns before their source slice ends (see Trace.to_chrome)


class _Event(msgspec.Struct, gc=False):
    """The fields of a Chrome trace event that the checks need; others are skipped."""

    ph: str
    pid: int = 0
    tid: int = 0
    ts: float = 0.0
    dur: float = 0.0
    id: int = 0


class _Section(msgspec.Struct):
    format: int
    ops: list[OpRecord] = []
    waits: list[WaitRecord] = []


class _File(msgspec.Struct):
    depengine: _Section | None = None
    traceEvents: list[_Event] = []


class _Probe(msgspec.Struct):
    """Enough of a file to say why it is not a trace we read."""

    depengine: dict | None = None


def read_trace(path) -> Trace:
    """The trace in the file at ``path``; :class:`TraceError` if it is bad."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise TraceError(f"{path}: the trace file is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data, _gc_paused():
                parsed = _decode(path, data)
                ops, waits = parsed.depengine.ops, parsed.depengine.waits
                ops, table = _check_records(path, ops, waits)
                _check_events(path, parsed.traceEvents, len(ops) + len(waits))
                del parsed
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace file: {exc.strerror or exc}") from exc
    return Trace._checked(ops, waits, path, table)


@contextmanager
def _gc_paused():
    """No collection while the records are made; then they join the oldest generation at once
    (``freeze`` + ``unfreeze``) instead of being scanned by every younger one on the way."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def _decode(path: str, data) -> _File:
    try:
        parsed = msgspec.json.decode(data, type=_File)
    except RecursionError as exc:
        raise TraceError(f"{path}: not a depengine trace: JSON nested deeper than any trace") from exc
    except msgspec.ValidationError as exc:
        raise TraceError(f"{path}: {_why_invalid(data, str(exc))}") from exc
    except msgspec.DecodeError as exc:
        msg = str(exc)
        if "truncated" in msg:
            raise TraceError(f"{path}: not valid JSON (the file looks truncated): {msg}") from exc
        raise TraceError(f"{path}: not valid JSON: {msg}") from exc
    if parsed.depengine is None:
        raise TraceError(f"{path}: not a depengine trace (no 'depengine' section); "
                         "write traces with prof.save() or DEPENGINE_PROFILE")
    if parsed.depengine.format != FORMAT_VERSION:
        raise TraceError(f"{path}: unsupported depengine trace format {parsed.depengine.format}; "
                         f"expected {FORMAT_VERSION}")
    return parsed


def _why_invalid(data, msg: str) -> str:
    """Name the real problem: a foreign file or another format version, else the schema error."""
    try:
        probe = msgspec.json.decode(data, type=_Probe)
    except (msgspec.MsgspecError, RecursionError):
        return f"not a depengine trace: {msg}"
    if probe.depengine is None:
        return f"not a depengine trace (no 'depengine' section): {msg}"
    version = probe.depengine.get("format")
    if version != FORMAT_VERSION:
        return f"unsupported depengine trace format {version!r}; expected {FORMAT_VERSION}"
    return f"malformed depengine trace: {msg}"


def _check_int(path: str, where: str, field: str, value: int, low: int = -INT64, high: int = INT64) -> None:
    if not low <= value < high:
        raise TraceError(f"{path}: {where}: {field}={value} is out of range")


def _check_record(path: str, n: int, r: OpRecord) -> None:
    """Raise the precise error for one op record (the slow path of _check_records)."""
    where = f"op record #{n} ({r.name[:40]!r})"
    _check_int(path, where, "id", r.id, 0)
    _check_int(path, where, "engine", r.engine, 0, 2**31)
    _check_int(path, where, "priority", r.priority)
    for field in TIMES:
        _check_int(path, where, field, getattr(r, field), -TIME_LIMIT, TIME_LIMIT)
    if r.state not in STATES:
        raise TraceError(f"{path}: {where}: unknown state {r.state[:40]!r}; expected one of {STATES}")
    if r.end < r.start:
        raise TraceError(f"{path}: {where}: negative duration (start {r.start} ns, end {r.end} ns)")
    if r.gpu_end is not None:
        _check_int(path, where, "gpu_end", r.gpu_end, -TIME_LIMIT, TIME_LIMIT)
        if r.gpu_end < r.start:
            raise TraceError(f"{path}: {where}: negative GPU duration "
                             f"(start {r.start} ns, gpu_end {r.gpu_end} ns)")
    for serial, _, version in (*r.reads, *r.writes):
        _check_int(path, where, "var serial", serial, 0)
        _check_int(path, where, "var version", version, 0)


def _check_records(path: str, ops: list[OpRecord],
                   waits: list[WaitRecord]) -> tuple[list[OpRecord], TraceTable]:
    """Vectorised checks on the records' table; the first suspect record goes through _check_record
    for the message.  Returns the records in key order and their table."""
    try:
        t = TraceTable(ops)
    except OverflowError:
        t = None
    if t is None or (t.acc_serial < 0).any() or (t.acc_ver < 0).any() or not set(t.states) <= set(STATES):
        bad = range(len(ops))
    else:
        times = np.stack([t.push, t.ready, t.start, t.end, t.stop])
        bad = np.nonzero((t.id < 0) | (t.engine < 0) | (t.engine >= 2**31) | (t.end < t.start)
                         | (t.stop < t.start) | (np.abs(times) >= TIME_LIMIT).any(axis=0))[0][:1]
    for n in bad:
        _check_record(path, int(n), ops[n])
    if t is None:  # unreachable: _check_record names every number that does not fit
        raise TraceError(f"{path}: a number in an op record is out of range")
    if len(ops) > 1:
        e, i = t.engine, t.id
        if not ((e[1:] > e[:-1]) | ((e[1:] == e[:-1]) & (i[1:] > i[:-1]))).all():  # not in key order
            order = np.lexsort((i, e))
            repeat = np.nonzero((e[order][1:] == e[order][:-1]) & (i[order][1:] == i[order][:-1]))[0]
            if len(repeat):
                n = int(order[repeat + 1].min())  # the first record whose key came before
                r = ops[n]
                raise TraceError(f"{path}: op record #{n} ({r.name[:40]!r}): a second op with id {r.id} "
                                 f"on engine {r.engine}")
            ops = [ops[k] for k in order.tolist()]
            t = TraceTable(ops)
    for n, w in enumerate(waits):
        where = f"wait record #{n}"
        _check_int(path, where, "start", w.start, -TIME_LIMIT, TIME_LIMIT)
        _check_int(path, where, "end", w.end, -TIME_LIMIT, TIME_LIMIT)
        if w.end < w.start:
            raise TraceError(f"{path}: {where}: negative duration (start {w.start} ns, end {w.end} ns)")
    return ops, t


def _check_events(path: str, events: list[_Event], n_records: int) -> None:
    """The Chrome part must describe the same run: known phases, slices >= 0, flows bound to slices."""
    if not events:
        return
    phases = list(map(attrgetter("ph"), events))
    unknown = set(phases) - set(PHASES)
    if unknown:
        n = next(k for k, p in enumerate(phases) if p in unknown)
        raise TraceError(f"{path}: Chrome event #{n} has unknown phase {events[n].ph[:20]!r}; "
                         f"a depengine trace has only {', '.join(PHASES)}")
    ph = np.fromiter(map(PHASES.index, phases), dtype=np.int8, count=len(phases))
    try:
        pid, tid, ts, dur, ids = (np.fromiter(map(attrgetter(f), events), dtype=np.float64, count=len(events))
                                  for f in ("pid", "tid", "ts", "dur", "id"))
    except OverflowError:
        raise TraceError(f"{path}: a Chrome event has a number out of range") from None
    bad = ((pid < 0) | (pid >= 2**31) | (tid < 0) | (tid >= 2**31) | ~np.isfinite(ts) | ~np.isfinite(dur)
           | (np.abs(ids) >= 2**53))
    if bad.any():
        raise TraceError(f"{path}: Chrome event #{int(np.argmax(bad))}: pid, tid, ts, dur or id out of range")
    pid, tid, ids = pid.astype(np.int64), tid.astype(np.int64), ids.astype(np.int64)
    x = ph == PHASES.index("X")
    if (dur[x] < 0).any():
        n = int(np.nonzero(x & (dur < 0))[0][0])
        raise TraceError(f"{path}: Chrome event #{n}: slice with negative duration {dur[n]} us")
    if int(x.sum()) != n_records:
        raise TraceError(f"{path}: inconsistent trace: {int(x.sum())} Chrome slices but "
                         f"{n_records} op and wait records")
    starts, ends = np.nonzero(ph == PHASES.index("s"))[0], np.nonzero(ph == PHASES.index("f"))[0]
    if not len(starts) and not len(ends):
        return
    s_order = starts[np.argsort(ids[starts], kind="stable")]
    f_order = ends[np.argsort(ids[ends], kind="stable")]
    for pos, name in ((s_order, "starts"), (f_order, "ends")):
        twice = np.nonzero(np.diff(ids[pos]) == 0)[0]
        if len(twice):
            raise TraceError(f"{path}: flow {ids[pos[twice[0]]]} has two {name}")
    if len(s_order) != len(f_order) or (ids[s_order] != ids[f_order]).any():
        lone = set(ids[starts].tolist()) ^ set(ids[ends].tolist())
        flow_id = min(lone)
        which = "start" if flow_id in set(ids[starts].tolist()) else "end"
        raise TraceError(f"{path}: flow {flow_id} has a {which} only")
    lane = (pid << 31) | tid
    _check_flow_ends(path, lane[x], ts[x], ts[x] + dur[x], np.concatenate([starts, ends]), lane, ts, ids)


def _check_flow_ends(path, s_lane, s_start, s_end, points, lane, ts, ids) -> None:
    """Every flow end must lie inside some slice of its pid/tid (Chrome's binding rule)."""
    order = np.lexsort((s_start, s_lane))
    s_lane, s_start, s_end = s_lane[order], s_start[order], s_end[order]
    p_lane, p_ts = lane[points], ts[points]
    ok = np.zeros(len(points), dtype=bool)
    lanes, first = np.unique(s_lane, return_index=True)
    bounds = np.append(first, len(s_lane))
    for k, one in enumerate(lanes):
        mine = np.nonzero(p_lane == one)[0]
        if not len(mine):
            continue
        lo, hi = bounds[k], bounds[k + 1]
        reach = np.maximum.accumulate(s_end[lo:hi])  # the latest end among slices started so far
        idx = np.searchsorted(s_start[lo:hi], p_ts[mine] + FLOW_SLACK_US, side="right") - 1
        ok[mine] = (idx >= 0) & (reach[np.maximum(idx, 0)] >= p_ts[mine] - FLOW_SLACK_US)
    if not ok.all():
        n = points[int(np.argmin(ok))]
        raise TraceError(f"{path}: flow {ids[n]} has an end at {ts[n]} us on pid {lane[n] >> 31} "
                         f"tid {lane[n] & (2**31 - 1)} where no op runs: a flow to a missing op")


# ------------------------------------------------------------------ writing
def chrome_trace(trace: Trace, records: bool = False) -> dict:
    """Chrome Trace Event Format of ``trace``: one process per engine and device, one thread per
    worker or stream, a complete event per op, a flow from producer to consumer per dependency,
    and the records in a ``"depengine"`` section (as dicts, or as the records themselves when
    ``records``: msgspec encodes dataclasses directly)."""
    t = trace.table()
    ops = trace.ops
    meta: list[dict] = []
    pids: dict[tuple, int] = {}
    tids: dict[tuple, int] = {}
    multi = len(set(t.engine.tolist())) > 1

    def pid_of(engine: int, device: str) -> int:
        if (engine, device) not in pids:
            pid = pids[(engine, device)] = len(pids) + 1
            meta.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                         "args": {"name": f"engine {engine} {device}" if multi else device}})
            meta.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                         "args": {"sort_index": pid}})
        return pids[(engine, device)]

    def tid_of(pid: int, lane: str) -> int:
        if (pid, lane) not in tids:
            tids[(pid, lane)] = len(tids) + 1
            meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tids[(pid, lane)],
                         "args": {"name": lane}})
        return tids[(pid, lane)]

    where = [(pid, tid_of(pid, r.lane)) for r in ops for pid in (pid_of(r.engine, r.device),)]
    events: list[dict] = []
    for r, (pid, tid), stop in zip(ops, where, t.stop.tolist(), strict=True):
        args = {"id": r.id, "state": r.state, "priority": r.priority,
                "reads": [f"{n}@v{v}" for _, n, v in r.reads],
                "writes": [f"{n}@v{v}" for _, n, v in r.writes],
                "queue_delay_us": max(0, r.start - r.ready) / 1e3}
        if r.error:
            args["error"] = r.error
        events.append({"ph": "X", "name": r.name, "cat": r.kind, "pid": pid, "tid": tid, "ts": r.start / 1e3,
                       "dur": max(stop - r.start, 0) / 1e3, "args": args})
    src, dst, var, version, hazard = (a.tolist() for a in t.edges())
    stops, starts, var_name = t.stop.tolist(), t.start.tolist(), t.var_name.tolist()
    for n, (s, d, v, k, h) in enumerate(zip(src, dst, var, version, hazard, strict=True)):
        name = f"{t.var_names[var_name[v]]}@v{k} {HAZARDS[h]}"
        events.append({"ph": "s", "id": n, "name": name, "cat": "dependency", "pid": where[s][0],
                       "tid": where[s][1], "ts": stops[s] / 1e3 - 0.001})
        events.append({"ph": "f", "bp": "e", "id": n, "name": name, "cat": "dependency",
                       "pid": where[d][0], "tid": where[d][1], "ts": starts[d] / 1e3})
    if trace.waits:
        host = len(pids) + 1
        meta.append({"ph": "M", "name": "process_name", "pid": host, "tid": 0,
                     "args": {"name": "waiting threads"}})
        for w in trace.waits:
            tid = tid_of(host, w.thread)
            events.append({"ph": "X", "name": w.what, "cat": "wait", "pid": host, "tid": tid,
                           "ts": w.start / 1e3, "dur": max(w.end - w.start, 0) / 1e3,
                           "args": {"outcome": w.outcome}})
    section = {"format": FORMAT_VERSION, "ops": ops, "waits": trace.waits}
    return {"traceEvents": meta + events, "displayTimeUnit": "ms",
            "depengine": section if records else msgspec.to_builtins(section)}


def write_trace(trace: Trace, path: str) -> None:
    """Save ``trace`` as Chrome JSON at ``path``, whole or not at all."""
    doc = chrome_trace(trace, records=True)
    try:
        data = msgspec.json.encode(doc)
    except UnicodeEncodeError:  # a name with a lone surrogate: JSON can only carry it escaped
        data = json.dumps(msgspec.to_builtins(doc)).encode("ascii")
    with atomic_write(path, "wb") as f:
        f.write(data)
