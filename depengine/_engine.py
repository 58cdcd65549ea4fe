"""The engine interface and the dependency tracking every engine type shares.

An op is pushed with the vars it reads and writes.  Each var keeps a queue of
the ops that wait for it (see ``_var.py`` and its four transitions).  An op
becomes ready when it is at the head of the queue of every var it names; its
counter starts at ``len(vars) + 1`` and drops once per var granted and once
when its push has finished registering, so exactly one thread sees it reach
zero and dispatches it.  docs/ARCHITECTURE.md draws the whole path.

One lock guards all scheduling state.  Under the GIL a single lock held for a
few hundred nanoseconds is cheaper than per-var locks, and it makes every
transition atomic.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref

from scheduler.locks import YieldingLock, acquire_yielding

from . import _op, profiler
from ._capture import Capturing, PerThread
from ._composite import record_shell
from ._device import cpu
from ._errors import DeviceUnavailableError, EngineClosedError, VarDeletedError
from ._native import refuse_async
from ._op import Done, Epoch, Op, RunContext, check_push_args, name_of, new_op
from ._options import OP_KINDS, EngineOptions, engine_class, resolve_core, resolve_type
from ._var import NEVER_CLEARED, Var, append_read, append_write, complete_read, complete_write
from ._waits import Waits

__all__ = ["Engine"]

_log = logging.getLogger("depengine")

_live_engines: weakref.WeakSet = weakref.WeakSet()
_CPU = cpu()
_sleep = time.sleep
_RUNNING = _op.RUNNING
# pending ops past which a pushing thread yields the GIL to the workers once per push
_BACKLOG = 2048


class Engine(Waits, Capturing):
    """A dependency engine.  ``Engine(type)`` returns the engine of that type.

    ``type`` is ``"naive"``, ``"threaded"`` or ``"perdevice"``; ``None`` reads
    ``DEPENGINE_ENGINE``.  The options (``workers``, ...) are those of
    :class:`~depengine._options.EngineOptions`.  Use it as a context manager,
    or call :meth:`close`.

    **The subclass contract.**  An engine type overrides only the hooks
    declared in the section below, each documented where it is declared
    with its default.  The public API, registration, execution, completion,
    failures and waits belong to this class and are not overridden.
    """

    type: str = ""

    def __new__(cls, type: str | None = None, **options):
        if cls is Engine:
            cls = engine_class(resolve_type(type), resolve_core(options.get("core")))
        return object.__new__(cls)

    def __init__(self, type: str | None = None, **options) -> None:
        self.options = EngineOptions.create(self.type, **options)
        self._seq = 0  # id of the next op
        self._nvars = 0
        self._epoch = Epoch()  # ops pushed since the last wait_all
        self._closed_epochs: list[Epoch] = []  # epochs some wait_all waits to drain
        self._failed_vars: set[Var] = set()  # vars whose last write failed
        self._unreported: list[BaseException] = []  # failures no wait has raised, oldest first
        self._closed = False
        self._debug = bool(os.environ.get("DEPENGINE_DEBUG"))
        self._prof = profiler.active_recorder()  # a Recorder while profiling, else None
        self._reset(forked=False)
        self._start()
        _live_engines.add(self)

    def _reset(self, forked: bool) -> None:
        """The locks and capture state, made anew (at start, and in a forked child)."""
        self._guard = YieldingLock()  # cold paths; hot paths use the raw lock with acquire_yielding
        self._lock = self._guard.raw
        self._any_deleted = False
        self._capturing = 0  # active record() and bulk() blocks
        self._graph = None   # the Graph being recorded
        self._bulks = PerThread()
        self._forked = forked
        self._closing = forked

    # ---------------------------------------------------- the subclass contract
    def _start(self) -> None:
        """Start the threads this type needs (from ``__init__``)."""

    def _dispatch(self, op: Op) -> None:
        """Hand over an op whose vars are all granted (from the thread that granted the last)."""
        raise NotImplementedError

    # Called with each op after its push registered it, or None.  The naive
    # engine runs there whatever became ready, so push returns after the op ran.
    _settle = None

    def _stop(self) -> None:
        """Stop and join the threads ``_start`` started (every op has finished)."""

    def _in_op(self) -> bool:
        """True when the calling thread is running one of this engine's ops."""
        return False

    def _place(self, device, kind: str, is_async: bool):
        """Validate ``device`` and ``kind`` for this type; return the ``(device, kind)`` to use."""
        if device is not None and device != _CPU:
            raise ValueError(f"device={device!r}: the {self.type!r} engine runs ops on cpu() only; "
                             "use Engine('perdevice') for GPUs")
        if kind not in OP_KINDS:
            raise ValueError(f"kind={kind!r} must be one of {', '.join(map(repr, OP_KINDS))}")
        return _CPU, kind

    def _stream_done(self, op: Op) -> None:
        """A GPU op's function has returned: its work is enqueued (per-device engine)."""

    def _async_started(self, op: Op, done: Done) -> None:
        """An async op's function has returned; ``done`` may not have been called yet."""

    def _plan_submit(self):
        """Where a plan run hands its chunks: a ``submit(item)``, or None to run them inline."""
        return None

    def _wait_gpu_for_var(self, var: Var) -> None:
        """Block until GPU work that wrote ``var`` has finished (per-device engine)."""

    def _wait_gpu_all(self) -> None:
        """Block until all enqueued GPU work has finished (per-device engine)."""

    def threads(self) -> list[threading.Thread]:
        """The threads that run this engine's ops (workers and stream threads)."""
        return []

    def _backlog(self) -> int:
        """Ops of the current epoch not finished (a flushing bulk yields the GIL past a few)."""
        return self._epoch.count

    def _drain_records(self, wait: float = 0.0) -> bool | None:
        """Store the records of ops that finished without the GIL (the compiled core's).  With ``wait``
        (a pusher waiting for a buffer ops hold): False when no op is pending; else the compiled core
        waits up to ``wait`` s for one to finish (True), and this engine cannot (None)."""
        return False if wait > 0 and not self._pending() else None

    def _pending(self) -> int:
        """Ops pushed and not finished, every epoch (a racy sum: a hint)."""
        return self._epoch.count + sum(e.count for e in tuple(self._closed_epochs))

    def gpu_runtime(self, device):
        """The GPU runtime behind ``device`` on this engine (its streams start on first use)."""
        raise DeviceUnavailableError(f"{device!r}: the {self.type!r} engine runs ops on cpu() only; "
                                     "use Engine('perdevice') for GPUs")

    # ------------------------------------------------------------- public API
    def new_var(self, name: str | None = None) -> Var:
        """A new var, tagged ``name`` (default ``"v<N>"``)."""
        if name is not None and not isinstance(name, str):
            raise TypeError(f"var name={name!r} must be a str or None")
        if self._closed:
            raise EngineClosedError(f"new_var({name!r}) on a closed engine")
        with self._guard:
            n = self._nvars
            self._nvars = n + 1
        return Var._create(self, f"v{n}" if name is None else name, n)

    def push_async(self, fn, reads=(), writes=(), name=None, priority=0, always_run=False,
                   device=None, kind="async") -> Op:
        """Push ``fn(ctx, done)``; the op completes when ``done(error=None)`` is called.

        ``done`` must be called exactly once, from any thread.
        """
        refuse_async(fn)
        return self.push(fn, reads, writes, name, priority, always_run, device, kind, False, True)

    def delete_var(self, var: Var, on_delete=None) -> None:
        """Release ``var`` once every op already pushed that names it has finished.

        ``on_delete()`` runs then, on the engine's thread; if it raises, the
        next ``wait_all`` raises that.  Later pushes naming ``var`` raise
        :class:`VarDeletedError`.
        """
        self._check_var(var, "var")
        if on_delete is not None and not callable(on_delete):
            raise TypeError(f"on_delete={on_delete!r} must be callable or None")

        def release(ctx: RunContext) -> None:
            if on_delete is None:
                return
            try:
                on_delete()
            except BaseException as exc:
                exc.add_note(f"depengine: raised by on_delete of var {var.name!r}")
                with self._guard:
                    self._unreported.append(exc)

        self.push(release, (), (var,), f"delete {var.name}", 0, True, None, "normal", False, False, var)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "closing" if self._closing else "open"
        return (f"<{type(self).__name__} type={self.type!r} workers={self.options.workers} "
                f"pending={self._pending()} failed_vars={len(self._failed_vars)} {state}>")

    # ------------------------------------------------------------ push path
    def push(self, fn, reads=(), writes=(), name=None, priority=0, always_run=False,
             device=None, kind="normal", pure=False, _async=False, _deleting=None, _wcounts=None) -> Op:
        """Push ``fn(ctx)``; it runs once every earlier op it conflicts with is done.

        Returns the :class:`Op` at once.  ``reads`` and ``writes`` are lists of
        vars (duplicates collapse; a var in both counts as a write).  ``pure``
        declares that the op does nothing but write its vars (a recorded plan
        may then drop it when nothing reads what it wrote).

        The last three parameters are the engine's own: ``_async`` for
        :meth:`push_async`; ``_deleting``, the var a delete op releases; and
        ``_wcounts``, which maps each var a composite op (a bulk or a plan
        run) writes to the number of its members writing it, so that versions
        count every one of them.  (Keyword-only parameters would cost a dict
        lookup per omitted argument on every push.)
        """
        if priority.__class__ is not int or not (name is None or name.__class__ is str) or not callable(fn):
            check_push_args(fn, priority, name)  # raises the error they deserve
        if reads.__class__ is not tuple:  # a list of one var takes the var's own 1-tuple
            if reads.__class__ is list:
                reads = reads[0]._solo if len(reads) == 1 and reads[0].__class__ is Var else tuple(reads)
            else:
                reads = self._as_vars(reads, "reads")
        if writes.__class__ is not tuple:
            if writes.__class__ is list:
                writes = writes[0]._solo if len(writes) == 1 and writes[0].__class__ is Var else tuple(writes)
            else:
                writes = self._as_vars(writes, "writes")
        for v in reads:
            if v.__class__ is not Var or v._engine is not self:
                self._check_var(v, "reads")
        for v in writes:
            if v.__class__ is not Var or v._engine is not self:
                self._check_var(v, "writes")
        # Duplicates collapse; a var both read and written counts as a write.
        if writes:
            if len(writes) == 1:
                if writes[0] in reads:
                    reads = tuple([v for v in reads if v is not writes[0]])
            else:
                if len(set(writes)) != len(writes):
                    writes = tuple(dict.fromkeys(writes))
                if reads:
                    reads = tuple([v for v in reads if v not in writes])
        n = len(reads)
        if n > 1 and (reads[0] is reads[1] if n == 2 else len(set(reads)) != n):
            reads = tuple(dict.fromkeys(reads))
        if device is None and kind == ("async" if _async else "normal"):
            device = _CPU
        else:
            device, kind = self._place(device, kind, _async)
        op = new_op(fn, reads, writes, name, priority, always_run, _async, device, kind, _wcounts)
        if self._capturing and _deleting is None and self._capture(op, pure):
            return op  # taken by a bulk or a recording of this thread

        if self._prof is not None:  # the op carries its own record while profiling (stamped unlocked)
            profiler.stamp_pushed(op, self)
        lock = self._lock
        if not lock.acquire(False):
            acquire_yielding(lock)
        try:
            if self._closing:
                self._check_accepting()
            if self._any_deleted:
                self._check_not_deleted(reads, writes)
            # Register: queue the op behind each var's earlier users.
            seq = self._seq
            self._seq = seq + 1
            op.id = seq
            epoch = self._epoch
            epoch.count += 1
            op._epoch = epoch
            wait = len(reads) + len(writes)
            for v in reads:
                if append_read(v, op):
                    wait -= 1
            for v in writes:
                if append_write(v, op, 1 if _wcounts is None else _wcounts[v]):
                    wait -= 1
            op._wait = wait  # the +1 of registration, already dropped
            if _deleting is not None:
                _deleting._deleted_at = seq
                self._any_deleted = True
        finally:
            lock.release()
        if not wait:
            self._dispatch(op)
        if self._settle is not None:
            self._settle(op)
        if epoch.count > _BACKLOG and not self._in_op():
            # The pusher never blocks, so under the GIL it can outrun the
            # workers; thousands of pending ops then make every garbage
            # collection slow.  Yield the GIL so the workers catch up.
            _sleep(0)
        return op

    def _as_vars(self, vs, role: str) -> tuple:
        if vs.__class__ is Var:
            return vs._solo
        if isinstance(vs, (list, tuple, set, frozenset)):
            return tuple(vs)
        raise TypeError(f"{role}={vs!r} must be a list or tuple of Var")

    def _check_not_deleted(self, *var_lists) -> None:
        for vs in var_lists:
            for v in vs:
                if v._deleted_at is not None:
                    raise VarDeletedError(f"var {v.name!r} was deleted at push #{v._deleted_at}")

    def _check_var(self, v, role: str) -> None:
        if v.__class__ is not Var:
            raise TypeError(f"{role}: {v!r} is not a Var (create vars with Engine.new_var)")
        if v._engine is not self:
            raise ValueError(f"{role}: var {v.name!r} belongs to another engine ({v._engine!r})")

    def _check_accepting(self) -> None:
        """Raise if no op may be pushed now (called under the lock)."""
        if self._forked:
            raise EngineClosedError("this engine belongs to the parent process; create a new one after fork")
        if self._closed or (self._closing and not self._in_op()):
            raise EngineClosedError("push after close(): the engine is closed")

    def _take_ids(self, n: int) -> int:
        """Reserve ``n`` consecutive op ids (for ops that run inside a composite); the first."""
        with self._guard:
            first = self._seq
            self._seq = first + n
        return first

    # ------------------------------------------------------- execution path
    def _execute(self, op: Op, pool=None) -> list:
        """Run a ready op (or skip it) and complete it; returns the ops it made ready.

        ``pool`` is the worker pool running it, when a pool calls this directly.
        """
        if op.__class__ is not Op:  # a chunk of a plan run (see plan.py)
            return op.execute()
        if self._failed_vars and not op.always_run:
            error = self._input_failure(op)
            if error is not None:
                return self._complete(op, error, False)
        op._state = _RUNNING
        if self._prof is not None:
            profiler.stamp_started(op)
        if op.is_async:
            return self._execute_async(op)
        try:
            op.fn(op)
        except BaseException as exc:
            return self._complete(op, exc, True)
        return self._complete(op, None, False)

    def _execute_async(self, op: Op) -> list:
        done = Done(self, op)
        try:
            op.fn(op, done)
        except BaseException as exc:
            with self._guard:
                already = done._called
                done._called = True
            if not already:
                return self._complete(op, exc, True)
            exc.add_note(f"depengine: raised by async op {op.name!r} (#{op.id}) after it called done()")
            with self._guard:
                self._unreported.append(exc)
        self._async_started(op, done)
        return []

    def _input_failure(self, op: Op) -> BaseException | None:
        seq = op.id
        for v in op.reads:
            if v._failure is not None and seq < v._clear_seq:
                return v._failure
        for v in op.writes:
            if v._failure is not None and seq < v._clear_seq:
                return v._failure
        return None

    def _complete(self, op: Op, error: BaseException | None, origin: bool) -> list:
        """Release ``op``'s vars and record its outcome; returns the ops made ready.

        ``origin`` is True when ``op`` itself raised ``error`` (rather than
        inheriting it from a failed var it named).  A composite op (a bulk or
        a plan run) may leave an :class:`~depengine._composite.Outcome` with
        the failure of each var it wrote.
        """
        comp = None
        if op._wcounts is not None and error is None:
            comp = getattr(op, "_outcome", None)
        if origin:
            error.add_note(f"depengine: raised by op {op.name!r} (#{op.id})")
        if op._name is None:  # name it before letting go of its function
            op._name = getattr(op.fn, "__qualname__", None) or name_of(op.fn)
        prof = self._prof
        if prof is not None:  # the op holds its vars: their versions are the ones it saw
            if comp is None:
                profiler.record_ended(prof.ops, op, error, origin)
            else:
                profiler.record_ended(prof.ops, record_shell(op) if comp.members_recorded else op,
                                      comp.origins[0] if comp.origins else None, True)
        if op.stream is not None and op._state == _RUNNING:
            self._stream_done(op)
        op.fn = None  # what the function holds is released before any waiter wakes
        ready = []
        lock = self._lock
        if not lock.acquire(False):
            acquire_yielding(lock)
        try:
            for v in op.reads:
                complete_read(v, ready)
            wcounts = op._wcounts
            for v in op.writes:
                complete_write(v, 1 if wcounts is None else wcounts[v], ready)
                e = error if comp is None else comp.failures.get(v)
                if e is not None:
                    if v._failure is None:
                        self._failed_vars.add(v)
                    v._failure = e
                    v._clear_seq = NEVER_CLEARED
                elif v._failure is not None:
                    v._failure = None
                    self._failed_vars.discard(v)
                if v._waiters:
                    self._wake_waiters(v)
            if comp is not None:
                self._unreported.extend(comp.origins)
                op.error = comp.origins[0] if comp.origins else None
                op._state = _op.FAILED if comp.origins else _op.DONE
            elif error is None:
                op._state = _op.DONE
            else:
                op.error = error
                op._state = _op.FAILED if origin else _op.SKIPPED
                if origin:
                    self._unreported.append(error)
            epoch = op._epoch
            epoch.count -= 1
            if not epoch.count and epoch.event is not None:
                epoch.event.set()
                self._closed_epochs.remove(epoch)
            if self._debug:
                for v in op.reads + op.writes:
                    v._check_invariants()
        finally:
            lock.release()
        return ready

    def _dispatch_all(self, ops: list) -> None:
        for op in ops:
            self._dispatch(op)


def live_engines() -> list[Engine]:
    """Every engine of this process that is not closed (the profiler attaches to them)."""
    return [engine for engine in _live_engines if not engine.closed]


def _close_live_engines() -> None:
    for engine in live_engines():
        try:
            engine.close()
        except Exception:
            _log.exception("depengine: closing %r at exit failed", engine)
    profiler.finish_env_profile()


def _forget_engines_after_fork() -> None:
    # The parent's threads do not exist here and its locks may be held.
    for engine in list(_live_engines):
        engine._reset(forked=True)
        engine._closed = True
    _live_engines.clear()


atexit.register(_close_live_engines)
os.register_at_fork(after_in_child=_forget_engines_after_fork)
profiler.start_env_profile()
