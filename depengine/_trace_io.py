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

:func:`atomic_write` is how every trace, picture and report is written: to a
temporary file beside the target, renamed over it only once complete, so a
failure leaves no half-written output.
"""

from __future__ import annotations

import mmap
import os
from operator import attrgetter

import msgspec
import numpy as np

from .trace import FORMAT_VERSION, OpRecord, TraceError, WaitRecord

__all__ = ["STATES", "read_trace"]

STATES = ("done", "failed", "skipped")
PHASES = ("M", "X", "s", "f")  # the Chrome event phases a depengine trace contains
INT64 = 2**63
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


def read_trace(path) -> tuple[list[OpRecord], list[WaitRecord]]:
    """The op and wait records of the trace file at ``path``; :class:`TraceError` if it is bad."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise TraceError(f"{path}: the trace file is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                parsed = _decode(path, data)
                ops, waits = parsed.depengine.ops, parsed.depengine.waits
                _check_records(path, ops, waits)
                _check_events(path, parsed.traceEvents, len(ops) + len(waits))
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace file: {exc.strerror or exc}") from exc
    return ops, waits


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
    for field in ("priority", "push", "ready", "start", "end"):
        _check_int(path, where, field, getattr(r, field))
    if r.state not in STATES:
        raise TraceError(f"{path}: {where}: unknown state {r.state[:40]!r}; expected one of {STATES}")
    if r.end < r.start:
        raise TraceError(f"{path}: {where}: negative duration (start {r.start} ns, end {r.end} ns)")
    if r.gpu_end is not None:
        _check_int(path, where, "gpu_end", r.gpu_end)
        if r.gpu_end < r.start:
            raise TraceError(f"{path}: {where}: negative GPU duration "
                             f"(start {r.start} ns, gpu_end {r.gpu_end} ns)")
    for serial, _, version in (*r.reads, *r.writes):
        _check_int(path, where, "var serial", serial, 0)
        _check_int(path, where, "var version", version, 0)


def _check_records(path: str, ops: list[OpRecord], waits: list[WaitRecord]) -> None:
    """Vectorised checks; the first suspect record goes through _check_record for the message."""
    try:
        a = np.array([(r.id, r.engine, r.priority, r.push, r.ready, r.start, r.end,
                       r.start if r.gpu_end is None else r.gpu_end) for r in ops], dtype=np.int64)
        a = a.reshape(-1, 8)
        v = np.array([x for r in ops for s, _, ver in (*r.reads, *r.writes) for x in (s, ver)],
                     dtype=np.int64)
    except OverflowError:
        a = v = None
    if a is None or (v < 0).any() or not {r.state for r in ops} <= set(STATES):
        bad = range(len(ops))
    else:
        bad = np.nonzero((a[:, 0] < 0) | (a[:, 1] < 0) | (a[:, 1] >= 2**31) | (a[:, 6] < a[:, 5])
                         | (a[:, 7] < a[:, 5]))[0][:1]
    for n in bad:
        _check_record(path, int(n), ops[n])
    if len({r.key for r in ops}) != len(ops):
        seen: set = set()
        for n, r in enumerate(ops):
            if r.key in seen:
                raise TraceError(f"{path}: op record #{n} ({r.name[:40]!r}): a second op with id {r.id} "
                                 f"on engine {r.engine}")
            seen.add(r.key)
    for n, w in enumerate(waits):
        where = f"wait record #{n}"
        _check_int(path, where, "start", w.start)
        _check_int(path, where, "end", w.end)
        if w.end < w.start:
            raise TraceError(f"{path}: {where}: negative duration (start {w.start} ns, end {w.end} ns)")


def _check_events(path: str, events: list[_Event], n_records: int) -> None:
    """The Chrome part must describe the same run: known phases, slices >= 0, flows bound to slices."""
    if not events:
        return
    ph = np.array([e.ph for e in events], dtype=object)
    unknown = set(ph.tolist()) - set(PHASES)
    if unknown:
        n = next(k for k, e in enumerate(events) if e.ph in unknown)
        raise TraceError(f"{path}: Chrome event #{n} has unknown phase {events[n].ph[:20]!r}; "
                         f"a depengine trace has only {', '.join(PHASES)}")
    try:
        cols = np.array(list(map(attrgetter("pid", "tid", "ts", "dur", "id"), events)), dtype=np.float64)
    except OverflowError:
        raise TraceError(f"{path}: a Chrome event has a number out of range") from None
    pid, tid, ts, dur, ids = cols.T
    bad = ((pid < 0) | (pid >= 2**31) | (tid < 0) | (tid >= 2**31) | ~np.isfinite(ts) | ~np.isfinite(dur)
           | (np.abs(ids) >= 2**53))
    if bad.any():
        raise TraceError(f"{path}: Chrome event #{int(np.argmax(bad))}: pid, tid, ts, dur or id out of range")
    pid, tid, ids = pid.astype(np.int64), tid.astype(np.int64), ids.astype(np.int64)
    x = ph == "X"
    if (dur[x] < 0).any():
        n = int(np.nonzero(x & (dur < 0))[0][0])
        raise TraceError(f"{path}: Chrome event #{n}: slice with negative duration {dur[n]} us")
    if int(x.sum()) != n_records:
        raise TraceError(f"{path}: inconsistent trace: {int(x.sum())} Chrome slices but "
                         f"{n_records} op and wait records")
    starts, ends = np.nonzero(ph == "s")[0], np.nonzero(ph == "f")[0]
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
