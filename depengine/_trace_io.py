"""Reading trace files safely.

A trace file is outside data: :func:`read_trace` parses it against a fixed
schema (msgspec decodes the JSON straight into the records of format 1, or
into the lists of format 2, see ``_trace_write``; no second copy of the
file lives as dicts), checks every value a picture relies on, and raises
:class:`TraceError` naming the file, the place and the problem; it
evaluates nothing.  It rejects

- files that are empty, truncated, not JSON, or JSON of another kind
  (no ``"depengine"`` section, a format other than 1 and 2);
- records of the wrong shape or type (a string id, a bool time, a missing
  field), integers outside 64 bits, unknown op states;
- in format 2, lists of different lengths, access counts that do not add
  up, text indices out of range, ops out of (engine, id) order;
- impossible records: negative durations, two ops with one id;
- a Chrome part that does not match: unknown event phases, negative
  durations, flow arrows whose ends no op encloses (a flow to a missing op),
  unpaired flows, a slice count that differs from the records;
- nesting deeper than the format has.

Times must lie within 2**62 ns (146 years) of the trace's origin, so that
the difference of two of them fits in 64 bits.  The checks run on the
columns of the :class:`~depengine._trace_table.TraceTable` that the trace
then keeps, so the file's numbers are converted once (a format 2 trace
makes its op records only when asked for them).  Decoding format 1 makes a
million objects that form no cycles: the garbage collector is paused while
it runs (collecting them as they are made cost a third of the decode).
"""

from __future__ import annotations

import gc
import mmap
import os
from contextlib import contextmanager
from itertools import accumulate, repeat
from operator import attrgetter
from typing import NoReturn

import msgspec
import numpy as np

from ._trace_table import TraceTable
from .trace import OpRecord, Trace, TraceError, WaitRecord

__all__ = ["FORMATS", "STATES", "read_trace"]

FORMATS = (1, 2)
STATES = ("done", "failed", "skipped")
PHASES = ("M", "X", "s", "f")  # the Chrome event phases a depengine trace contains
INT64 = 2**63
TIME_LIMIT = 2**62  # ns from the origin: the difference of two times fits in 64 bits
TIMES = ("push", "ready", "start", "end")
FLOW_SLACK_US = 0.01  # flows start 1 ns before their source slice ends (see _trace_write)


class _Event(msgspec.Struct, gc=False):
    """The fields of a Chrome trace event that the checks need; others are skipped."""

    ph: str
    pid: int = 0
    tid: int = 0
    ts: float = 0.0
    dur: float = 0.0
    id: int = 0


class _Records(msgspec.Struct, tag_field="format", tag=1):
    """Format 1: one object per record."""

    ops: list[OpRecord] = []
    waits: list[WaitRecord] = []


class _OpColumns(msgspec.Struct, gc=False):
    id: list[int]
    engine: list[int]
    priority: list[int]
    push: list[int]
    ready: list[int]
    start: list[int]
    end: list[int]
    gpu_end: list[int | None]
    name: list[int]
    device: list[int]
    kind: list[int]
    lane: list[int]
    state: list[int]
    error: list[int]
    reads: list[int]
    writes: list[int]


class _Accesses(msgspec.Struct, gc=False):
    serial: list[int]
    var: list[int]
    version: list[int]


class _Text(msgspec.Struct, gc=False):
    name: list[str]
    device: list[str]
    kind: list[str]
    lane: list[str]
    state: list[str]
    error: list[str]
    var: list[str]


class _Columns(msgspec.Struct, tag_field="format", tag=2):
    """Format 2: one list per field."""

    ops: _OpColumns
    accesses: _Accesses
    text: _Text
    waits: list[WaitRecord] = []


class _File(msgspec.Struct):
    depengine: _Records | _Columns | None = None
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
                section = parsed.depengine
                if isinstance(section, _Records):
                    ops, table = _check_records(path, section.ops)
                else:
                    ops, table = None, _check_columns(path, section)
                _check_waits(path, section.waits)
                _check_events(path, parsed.traceEvents, table.n + len(section.waits))
                del parsed
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace file: {exc.strerror or exc}") from exc
    return Trace._checked(ops, section.waits, path, table)


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
    if version not in FORMATS or version is True:
        return f"unsupported depengine trace format {version!r}; expected 1 or 2"
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


def _check_records(path: str, ops: list[OpRecord]) -> tuple[list[OpRecord], TraceTable]:
    """Format 1: the records' table, checked; the records in key order."""
    try:
        t = TraceTable(ops)
    except OverflowError:
        _first_bad_record(path, ops.__getitem__, len(ops))
    _check_table(path, t, ops.__getitem__)
    order = _key_order(path, t, ops.__getitem__)
    if order is not None:
        ops = [ops[k] for k in order.tolist()]
        t = TraceTable(ops)
    return ops, t


def _check_columns(path: str, c: _Columns) -> TraceTable:
    """Format 2: the lists' table, checked: lengths, counts and text indices first."""
    o, acc, text = c.ops, c.accesses, c.text
    n = len(o.id)
    for field in _OpColumns.__struct_fields__:
        if len(getattr(o, field)) != n:
            raise TraceError(f"{path}: malformed depengine trace: ops.{field} has {len(getattr(o, field))} "
                             f"entries, ops.id {n}")
    if n and min(min(o.reads), min(o.writes)) < 0:
        raise TraceError(f"{path}: malformed depengine trace: a negative count in ops.reads or ops.writes")
    total = sum(o.reads) + sum(o.writes)
    for field in _Accesses.__struct_fields__:
        if len(getattr(acc, field)) != total:
            raise TraceError(f"{path}: malformed depengine trace: accesses.{field} has "
                             f"{len(getattr(acc, field))} entries, ops.reads and ops.writes count {total}")
    for field, codes, low in ((*((f, getattr(o, f), 0) for f in TraceTable.TEXTS), ("error", o.error, -1),
                               ("var", acc.var, 0))):
        strings = getattr(text, field)
        if field != "error" and len(set(strings)) != len(strings):  # each name is one lane, one colour
            seen: set[str] = set()
            twice = next(x for x in strings if x in seen or seen.add(x))
            raise TraceError(f"{path}: malformed depengine trace: text.{field} holds {twice[:40]!r} twice")
        if codes and not low <= min(codes) <= max(codes) < len(strings):
            k = next(k for k, v in enumerate(codes) if not low <= v < len(strings))
            raise TraceError(f"{path}: malformed depengine trace: {'accesses' if field == 'var' else 'ops'}."
                             f"{field}[{k}] = {codes[k]} is not an index into the {len(strings)} entries of "
                             f"text.{field}")
    texts = {f: (getattr(text, f), getattr(o, f)) for f in TraceTable.TEXTS}
    errors = {i: text.error[k] for i, k in enumerate(o.error) if k >= 0}
    try:
        t = TraceTable.from_columns({f: getattr(o, f) for f in TraceTable.INTS}, o.gpu_end, texts, errors,
                                    o.reads, o.writes, acc.serial, acc.var, acc.version, text.var)
    except OverflowError:
        offsets = [0, *accumulate(r + w for r, w in zip(o.reads, o.writes, strict=True))]
        _first_bad_record(path, lambda k: _raw_record(c, offsets[k], k), n)
    _check_table(path, t, t.record)
    if _key_order(path, t, t.record) is not None:
        raise TraceError(f"{path}: malformed depengine trace: the ops are not in (engine, id) order")
    return t


def _raw_record(c: _Columns, start: int, k: int) -> OpRecord:
    """Op ``k`` of format 2 lists (its accesses from ``start`` on) as a record, numbers as they
    are, to name one out of range."""
    o, acc, text = c.ops, c.accesses, c.text
    rows = [(acc.serial[j], text.var[acc.var[j]], acc.version[j])
            for j in range(start, start + o.reads[k] + o.writes[k])]
    return OpRecord(**{f: getattr(o, f)[k] for f in TraceTable.INTS},
                    **{f: getattr(text, f)[getattr(o, f)[k]] for f in TraceTable.TEXTS},
                    reads=rows[:o.reads[k]], writes=rows[o.reads[k]:], gpu_end=o.gpu_end[k])


def _first_bad_record(path: str, record_of, n: int) -> NoReturn:
    """Raise the error of the first record with a number out of range (slow: for bad files only)."""
    for k in range(n):
        _check_record(path, k, record_of(k))
    raise TraceError(f"{path}: a number in an op record is out of range")


def _check_table(path: str, t: TraceTable, record_of) -> None:
    """Vectorised checks; the first suspect record goes through _check_record for the message."""
    if not set(t.states) <= set(STATES):
        bad = np.flatnonzero(~np.isin(t.state, [t.states.index(s) for s in STATES if s in t.states]))[:1]
    elif (t.acc_serial < 0).any() or (t.acc_ver < 0).any():
        bad = t.acc_op[(t.acc_serial < 0) | (t.acc_ver < 0)][:1]
    else:
        times = np.stack([t.push, t.ready, t.start, t.end, t.stop])
        bad = np.flatnonzero((t.id < 0) | (t.engine < 0) | (t.engine >= 2**31) | (t.end < t.start)
                             | (t.stop < t.start) | (np.abs(times) >= TIME_LIMIT).any(axis=0))[:1]
    for k in bad.tolist():
        _check_record(path, k, record_of(k))


def _key_order(path: str, t: TraceTable, record_of) -> np.ndarray | None:
    """None when the ops are in (engine, id) order, else the order that sorts them; two ops with
    one key are an error."""
    e, i = t.engine, t.id
    if ((e[1:] > e[:-1]) | ((e[1:] == e[:-1]) & (i[1:] > i[:-1]))).all():
        return None
    order = np.lexsort((i, e))
    repeat = np.flatnonzero((e[order][1:] == e[order][:-1]) & (i[order][1:] == i[order][:-1]))
    if len(repeat):
        k = int(order[repeat + 1].min())  # the first record whose key came before
        r = record_of(k)
        raise TraceError(f"{path}: op record #{k} ({r.name[:40]!r}): a second op with id {r.id} "
                         f"on engine {r.engine}")
    return order


def _check_waits(path: str, waits: list[WaitRecord]) -> None:
    for n, w in enumerate(waits):
        where = f"wait record #{n}"
        _check_int(path, where, "start", w.start, -TIME_LIMIT, TIME_LIMIT)
        _check_int(path, where, "end", w.end, -TIME_LIMIT, TIME_LIMIT)
        if w.end < w.start:
            raise TraceError(f"{path}: {where}: negative duration (start {w.start} ns, end {w.end} ns)")


def _check_events(path: str, events: list[_Event], n_records: int) -> None:
    """The Chrome part must describe the same run: known phases, slices >= 0, flows bound to slices."""
    if not events:
        return
    code = {p: k for k, p in enumerate(PHASES)}  # -1: unknown
    ph = np.fromiter(map(code.get, map(attrgetter("ph"), events), repeat(-1)), np.int8, len(events))
    if (ph < 0).any():
        n = int(np.argmax(ph < 0))
        raise TraceError(f"{path}: Chrome event #{n} has unknown phase {events[n].ph[:20]!r}; "
                         f"a depengine trace has only {', '.join(PHASES)}")
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
