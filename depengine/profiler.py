"""Recording what engines do: ``with de.profile() as prof:``.

While a profile records, every engine (existing and new) calls a
:class:`Recorder` at push, start and end of each op and around each wait.
Off, the engine pays one ``is not None`` test per hook.  On, each hook is a
timestamp or an append to the recorder's store: no lock, so recording never
serialises the workers.  The pure-Python engine calls the hooks below; the
compiled core stamps its ops and writes their records in C
(``_core_records.c``), into the same store and the same layout.
``DEPENGINE_PROFILE=trace.json`` records a whole run and writes the trace when
the interpreter exits.
"""

from __future__ import annotations

import os
import threading
from threading import get_ident
from time import perf_counter_ns
from typing import NamedTuple

from ._compiled import IMPLEMENTATION as DEFAULT_IMPLEMENTATION
from ._compiled import core_module
from ._op import STATE_NAMES

__all__ = ["IMPLEMENTATION", "Profile", "Record", "Recorder", "active_recorder", "profile"]

_active: Recorder | None = None
_switch = threading.Lock()


class Record(NamedTuple):
    """One finished op as the hooks recorded it: the record layout, in its one place.

    The hooks store records flat: the fields up to ``error`` (``HEAD``, the
    same order as ``RECORD_HEAD`` in ``_core_records.c``, checked when this
    module picks its store of records), then
    the number of vars read and written, the vars read, the vars written,
    the versions read and the versions before each write.
    :meth:`Recorder.records` gives them back as ``Record`` tuples, where
    ``reads`` and ``writes`` are lists of ``(var, version)``, a write's
    version being the one it made.
    """

    engine: object        # the engine that ran it
    id: int
    name: str | None
    device: object
    kind: str
    priority: int
    lane: str | None      # GPU stream name; None for CPU ops (the thread names the lane)
    push: int             # perf_counter_ns() stamps
    start: int
    thread: int | None    # ident of the thread that ran it; None if skipped
    end: int
    state: str            # "done", "failed" or "skipped"
    error: BaseException | None
    reads: list
    writes: list


HEAD = Record._fields[:Record._fields.index("reads")]
_env_profile: Profile | None = None


def active_recorder() -> Recorder | None:
    """The recorder engines report to, or None when nothing records."""
    return _active


# The per-op hooks.  While profiling, an engine calls stamp_pushed(op, engine)
# as it registers an op (op._p_engine = the engine, op._p_lane = None,
# op._p_push; a GPU engine then sets op._p_lane to the stream),
# stamp_started(op) when the op starts (op._p_start, op._p_thread) and
# record_ended(recorder.ops, op, error, origin) once it is finished: ``error``
# is None (done), what it raised (``origin``) or what it inherited from a
# failed var (skipped).  record_ended copies what a trace needs into the
# recorder's store (see Record): a packed depengine._core.Records
# (_core_records.c: raw numbers, and the long-lived engine, device and var
# objects) where the compiled core is built, else the end of one flat list of
# plain values (ints, strs, the same objects); either way no container per op
# survives and the op itself is not kept.  The pure-Python engine calls these
# hooks; the compiled core stamps its ops and writes their records in C.
def _pushed(op, engine) -> None:
    op._p_engine = engine
    op._p_lane = None
    op._p_push = perf_counter_ns()


def _started(op) -> None:
    op._p_start = perf_counter_ns()
    op._p_thread = get_ident()


def _ended(flat: list, op, error, origin: bool) -> None:
    end = perf_counter_ns()
    try:
        engine = op._p_engine
    except AttributeError:  # pushed before recording began
        return
    if error is None:
        state, start, thread = "done", op._p_start, op._p_thread
    elif origin:
        state, start, thread = "failed", op._p_start, op._p_thread
    else:  # skipped ops never started
        state, start, thread = "skipped", end, None
    reads = op.reads
    writes = op.writes
    record = [engine, op.id, op._name, op.device, op.kind, op.priority, op._p_lane, op._p_push, start,
              thread, end, state, error, len(reads), len(writes)]
    record += reads
    record += writes
    for v in reads:
        record.append(v.version)
    for v in writes:
        record.append(v.version)
    if flat.__class__ is list:
        flat += record  # one extend: records of ops ending on two workers at once never interleave
    else:
        flat.append(record)  # the packed store copies it in one go


def _packed_store():
    """The C store of records when the compiled core is built (and of this layout), else None."""
    c = core_module
    if c is not None and tuple(c.RECORD_HEAD) == HEAD:  # a build of another layout is not ours
        return c
    return None


_packed = _packed_store()
# Where records go: a packed depengine._core.Records (raw numbers, no int object per record) when the
# core is built, else a flat list.  The pure-Python engine's hooks above write into either; the
# compiled core writes its ops' records itself, in C.
_new_store = _packed.Records if _packed is not None else list
_set_gc_tracked = _packed.set_gc_tracked if _packed is not None else None
stamp_pushed, stamp_started, record_ended = _pushed, _started, _ended
# IMPLEMENTATION: the engine implementation Engine() builds here, "compiled" or "python"
IMPLEMENTATION = DEFAULT_IMPLEMENTATION


class Recorder:
    """Raw, append-only records; turned into a :class:`~depengine.trace.Trace` at the end.

    While it records, its store of records is hidden from the garbage
    collector (with the C hooks), which would otherwise walk every record
    again at each full collection: nothing in it can be garbage then, since
    the recorder is reachable from this module.  ``Profile.stop`` shows it again.
    """

    __slots__ = ("gpu", "ops", "threads", "waits")

    def __init__(self) -> None:
        self.ops = _new_store()  # records of finished ops: a list (flat layout) or a packed Records
        self.waits: list = []    # (thread_ident, what, start_ns, end_ns, outcome)
        self.gpu: list = []      # (engine id, op id, finished_ns): when enqueued GPU work ended
        self.threads: dict[int, str] = {}  # thread ident -> name, for waits

    def _collector_sees_records(self, visible: bool) -> None:
        if _set_gc_tracked is not None:
            _set_gc_tracked(self.ops, visible)

    def member_ended(self, op, read_versions: list, write_versions: list) -> None:
        """A member of a bulk or plan run finished (its state is set); the versions are
        the ones it saw, which the vars do not show while the composite runs."""
        end = perf_counter_ns()
        try:
            engine = op._p_engine
        except AttributeError:  # pushed before recording began
            return
        state = STATE_NAMES[op._state]
        ran = state != "skipped"
        record = [engine, op.id, op.name, op.device, op.kind, op.priority, op._p_lane, op._p_push,
                  op._p_start if ran else end, op._p_thread if ran else None, end, state, op.error,
                  len(op.reads), len(op.writes), *op.reads, *op.writes, *read_versions, *write_versions]
        if self.ops.__class__ is list:
            self.ops += record
        else:
            self.ops.append(record)

    def flat(self) -> list:
        """The records in the flat layout (see :class:`Record`), whichever store holds them."""
        return self.ops if self.ops.__class__ is list else self.ops.tolist()

    def records(self) -> list[Record]:
        """One :class:`Record` per finished op, in the order they finished."""
        flat = self.flat()
        out = []
        i = 0
        n = len(flat)
        h = len(HEAD)
        while i < n:
            head = flat[i:i + h]
            nr, nw = flat[i + h], flat[i + h + 1]
            j = i + h + 2
            vars_r, vars_w = flat[j:j + nr], flat[j + nr:j + nr + nw]
            k = j + nr + nw
            reads = list(zip(vars_r, flat[k:k + nr], strict=True))
            writes = [(v, ver + 1) for v, ver in zip(vars_w, flat[k + nr:k + nr + nw], strict=True)]
            out.append(Record(*head, reads, writes))
            i = k + nr + nw
        return out

    def gpu_finished(self, op, finished_ns: int) -> None:
        engine = getattr(op, "_p_engine", None)
        if engine is not None:
            self.gpu.append((engine, op.id, finished_ns))

    def waited(self, what: str, start_ns: int, outcome: str) -> None:
        ident = threading.get_ident()
        if ident not in self.threads:
            self.threads[ident] = threading.current_thread().name
        self.waits.append((ident, what, start_ns, perf_counter_ns(), outcome))


class Profile:
    """A recording session.  Use ``with de.profile() as prof:``, then ``prof.trace()``,
    ``prof.save(path)`` (Chrome trace JSON) or ``prof.stats()``."""

    def __init__(self) -> None:
        self._recorder: Recorder | None = None
        self._trace = None

    def start(self) -> Profile:
        global _active
        from ._engine import live_engines

        with _switch:
            if _active is not None:
                raise RuntimeError("a profile is already recording; stop it before starting another")
            if self._recorder is not None:
                raise RuntimeError("this profile was already used; create a new one with de.profile()")
            rec = self._recorder = Recorder()
            rec._collector_sees_records(False)
            _active = rec
            for engine in live_engines():
                engine._prof = rec
        return self

    def stop(self) -> None:
        global _active
        from ._engine import live_engines

        with _switch:
            if _active is not self._recorder:
                return
            _active = None
            for engine in live_engines():
                if engine._prof is self._recorder:
                    engine._prof = None
            self._recorder._collector_sees_records(True)

    @property
    def recording(self) -> bool:
        return self._recorder is not None and _active is self._recorder

    def trace(self):
        """The recorded :class:`~depengine.trace.Trace` (ops completed so far)."""
        from .trace import Trace

        if self._recorder is None:
            raise RuntimeError("nothing recorded: use the profile as a context manager first")
        if self._trace is None or self.recording:
            if self.recording:
                from ._engine import live_engines

                for engine in live_engines():  # records of native ops the core holds back
                    engine._drain_records()
            self._trace = Trace.from_recorder(self._recorder)
        return self._trace

    def save(self, path) -> str:
        """Write the trace as Chrome Trace Event JSON (Perfetto, chrome://tracing)."""
        return self.trace().save(path)

    def stats(self):
        """Per-op-name timings, worker utilisation, queueing, parallelism, critical path."""
        return self.trace().stats()

    def __enter__(self) -> Profile:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        n = len(self._recorder.records()) if self._recorder else 0
        return f"<Profile ops={n} {'recording' if self.recording else 'stopped'}>"


def profile() -> Profile:
    """A profile that records every engine while its ``with`` block runs."""
    return Profile()


def start_env_profile() -> None:
    """Start recording the whole run when ``DEPENGINE_PROFILE`` names a file."""
    global _env_profile
    if os.environ.get("DEPENGINE_PROFILE") and _env_profile is None:
        _env_profile = Profile().start()


def finish_env_profile() -> None:
    """Called at exit, after engines closed: write ``DEPENGINE_PROFILE`` if set."""
    global _env_profile
    prof = _env_profile
    if prof is None:
        return
    _env_profile = None
    prof.stop()
    path = os.environ.get("DEPENGINE_PROFILE")
    if path:
        prof.save(path)

