"""Recording what engines do: ``with de.profile() as prof:``.

While a profile records, every engine (existing and new) calls a
:class:`Recorder` at push, ready, start and end of each op and around each
wait.  Off, the engine pays one ``is not None`` test per hook.  On, each hook
is a timestamp and a list append: no lock, so recording never serialises the
workers.  ``DEPENGINE_PROFILE=trace.json`` records a whole run and writes the
trace when the interpreter exits.
"""

from __future__ import annotations

import os
import threading
from time import perf_counter_ns

from .op import _STATE_NAMES

__all__ = ["Profile", "Recorder", "active_recorder", "profile"]

_active: Recorder | None = None
# The fixed fields of each record, in order (then the var counts and the vars; see Recorder).
_FIELDS = ("engine", "id", "name", "device", "kind", "priority", "lane", "push", "start", "thread", "end",
           "state", "error")
_HEAD = len(_FIELDS)
_switch = threading.Lock()
_env_profile: Profile | None = None


def active_recorder() -> Recorder | None:
    """The recorder engines report to, or None when nothing records."""
    return _active


class Recorder:
    """Raw, append-only records; turned into a :class:`~depengine.trace.Trace` at the end."""

    __slots__ = ("ops", "waits", "gpu", "threads")

    def __init__(self) -> None:
        self.ops: list = []  # flat records of finished ops, see ended()
        self.waits: list = []    # (thread_ident, what, start_ns, end_ns, outcome)
        self.gpu: list = []      # (engine id, op id, finished_ns): when enqueued GPU work ended
        self.threads: dict[int, str] = {}  # thread ident -> name, for waits

    # While profiling, an engine stamps each op itself (op._rec = the engine,
    # op._t_push, op._lane = None; op._t_start and op._t_thread when it
    # starts; op._lane for GPU streams) and calls ended() once the op is
    # finished.  ended() copies what a trace needs into one flat list of
    # plain values (ints, strs, and the long-lived engine, device and var
    # objects): no new container per op, and the op itself is not kept, so
    # recording adds nothing for the garbage collector to walk.
    #
    # Record layout: _HEAD fields (see _FIELDS), then the vars read, the vars
    # written, the versions read and the versions before each write.
    def ended(self, op, error, origin: bool) -> None:
        """``op`` finished: ``error`` is None (done), what it raised (``origin``) or what it
        inherited from a failed var (skipped)."""
        end = perf_counter_ns()
        try:
            rec = op._rec
        except AttributeError:  # pushed before recording began
            return
        if error is None:
            state, start, thread = "done", op._t_start, op._t_thread
        elif origin:
            state, start, thread = "failed", op._t_start, op._t_thread
        else:  # skipped ops never started
            state, start, thread = "skipped", end, None
        reads = op.reads
        writes = op.writes
        flat = self.ops
        flat += (rec, op.id, op._name, op.device, op.kind, op.priority, op._lane, op._t_push, start, thread,
                 end, state, error, len(reads), len(writes))  # a tuple display: no list made and freed
        flat += reads
        flat += writes
        for v in reads:
            flat.append(v.version)
        for v in writes:
            flat.append(v.version)

    def member_ended(self, op, read_versions: list, write_versions: list) -> None:
        """A member of a bulk or plan run finished (its state is set); the versions are
        the ones it saw, which the vars do not show while the composite runs."""
        end = perf_counter_ns()
        try:
            rec = op._rec
        except AttributeError:  # pushed before recording began
            return
        state = _STATE_NAMES[op._state]
        ran = state != "skipped"
        self.ops += [rec, op.id, op.name, op.device, op.kind, op.priority, op._lane, op._t_push,
                     op._t_start if ran else end, op._t_thread if ran else None, end, state, op.error,
                     len(op.reads), len(op.writes), *op.reads, *op.writes, *read_versions, *write_versions]

    def records(self) -> list[tuple]:
        """One tuple per finished op: the _FIELDS, then ``reads`` and ``writes`` as lists of
        ``(var, version)`` (for a write, the version it made)."""
        flat = self.ops
        out = []
        i = 0
        n = len(flat)
        while i < n:
            head = flat[i:i + _HEAD]
            nr, nw = flat[i + _HEAD], flat[i + _HEAD + 1]
            j = i + _HEAD + 2
            vars_r, vars_w = flat[j:j + nr], flat[j + nr:j + nr + nw]
            k = j + nr + nw
            out.append((*head, list(zip(vars_r, flat[k:k + nr], strict=True)),
                        [(v, ver + 1) for v, ver in zip(vars_w, flat[k + nr:k + nr + nw], strict=True)]))
            i = k + nr + nw
        return out

    def gpu_finished(self, op, finished_ns: int) -> None:
        engine = getattr(op, "_rec", None)
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
        from .engine import _live_engines

        with _switch:
            if _active is not None:
                raise RuntimeError("a profile is already recording; stop it before starting another")
            if self._recorder is not None:
                raise RuntimeError("this profile was already used; create a new one with de.profile()")
            rec = self._recorder = Recorder()
            _active = rec
            for engine in list(_live_engines):
                engine._prof = rec
        return self

    def stop(self) -> None:
        global _active
        from .engine import _live_engines

        with _switch:
            if _active is not self._recorder:
                return
            _active = None
            for engine in list(_live_engines):
                if engine._prof is self._recorder:
                    engine._prof = None

    @property
    def recording(self) -> bool:
        return self._recorder is not None and _active is self._recorder

    def trace(self):
        """The recorded :class:`~depengine.trace.Trace` (ops completed so far)."""
        from .trace import Trace

        if self._recorder is None:
            raise RuntimeError("nothing recorded: use the profile as a context manager first")
        if self._trace is None or self.recording:
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

