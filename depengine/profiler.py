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

__all__ = ["Profile", "Recorder", "active_recorder", "profile"]

_active: Recorder | None = None
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
    # op._t_push, op._t_start, op._t_thread; op._lane for GPU streams) and
    # calls ended() once the op is finished.  ended() appends [op, end_ns,
    # versions read..., versions before each write...] to one flat list: no
    # new container per op, only a few appends.  Finished ops stay alive until
    # the trace is built; their functions (and what those hold) were released
    # at completion.
    def ended(self, op, versions=None) -> None:
        """``op`` finished; ``versions`` = (read versions, versions before each write) when
        the vars do not show them (members of a bulk or plan run)."""
        end = perf_counter_ns()
        if getattr(op, "_rec", None) is None:  # pushed before recording began
            return
        flat = self.ops
        flat.append(op)
        flat.append(end)
        if versions is not None:
            flat.extend(versions[0])
            flat.extend(versions[1])
            return
        for v in op.reads:
            flat.append(v.version)
        for v in op.writes:
            flat.append(v.version)

    def records(self) -> list[tuple]:
        """``(op, end_ns, read_versions, versions_written)`` for each finished op."""
        flat = self.ops
        out = []
        i = 0
        while i < len(flat):
            op, end = flat[i], flat[i + 1]
            nr, nw = len(op.reads), len(op.writes)
            j = i + 2 + nr
            out.append((op, end, flat[i + 2:j], [v + 1 for v in flat[j:j + nw]]))
            i = j + nw
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

