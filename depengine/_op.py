"""Ops: what ``push`` returns and what an op's function receives; the one op factory."""

from __future__ import annotations

import threading
from abc import ABCMeta

from ._native import NATIVE_TYPES

__all__ = ["Done", "Op", "RunContext", "check_push_args", "new_op"]

# Op._state values.  "pending" and "ready" are told apart by Op._wait.
PENDING, RUNNING, DONE, FAILED, SKIPPED = range(5)
STATE_NAMES = ("pending", "running", "done", "failed", "skipped")
FINISHED = (DONE, FAILED, SKIPPED)


class RunContext(metaclass=ABCMeta):  # noqa: B024 (an ABC for register(), not for abstract methods)
    """What an op's function receives as ``ctx``.

    ``op_name`` and ``op_id`` name the op; ``device`` is where it runs;
    ``stream`` is the GPU stream to enqueue work on (``None`` for CPU ops).
    The engine passes the op itself, which is a ``RunContext``: that costs
    nothing per op.  (The compiled core's ops are registered as virtual
    subclasses of ``RunContext`` and ``Op``.)
    """

    __slots__ = ()

    @property
    def op_name(self) -> str:
        return self.name

    @property
    def op_id(self) -> int:
        return self.id

    @property
    def input_failure(self) -> BaseException | None:
        """While the op runs: the failure it would be skipped for without ``always_run``.

        That is the exception of a failed var it names whose failure no wait
        had reported when the op was pushed; None when there is none.  An op
        pushed with ``always_run=True`` reads it to tell a clean input from a
        failed one (the MPI engine's send ops forward the failure).
        """
        seq = self.id
        for vs in (self.reads, self.writes):
            for v in vs:
                if v._failure is not None and seq < v._clear_seq:
                    return v._failure
        return None


class Op(RunContext):
    """One pushed operation.  Returned by ``Engine.push``; read-only for users.

    ``state`` is one of ``"pending"`` (waiting for its vars), ``"ready"``
    (queued for a worker), ``"running"``, ``"done"``, ``"failed"`` (its
    function raised) or ``"skipped"`` (it named a failed var).  ``error`` is
    the exception of a failed or skipped op.
    """

    __slots__ = (
        "_epoch",     # the _Epoch counting it until it finishes
        "_name",      # None until named (from fn at the latest when it finishes)
        "_outcome",   # composite ops: the Outcome they leave when they end (else unset)
        "_p_engine",  # _p_*: stamps of the profiler's hooks, set only while profiling
        "_p_lane",
        "_p_push",
        "_p_start",
        "_p_thread",
        "_state",
        "_wait",      # vars not yet granted, +1 until its push has registered it
        "_wcounts",   # composite ops: var -> number of members writing it
        "always_run",
        "device",
        "error",
        "fn",
        "id",
        "is_async",
        "kind",
        "meta",       # what ops/ attaches for recorded plans
        "priority",
        "reads",
        "stream",
        "writes",
    )

    def __init__(self, *args, **kwargs) -> None:
        raise TypeError("Op cannot be created directly; use Engine.push()")

    @property
    def name(self) -> str:
        if self._name is None:
            self._name = name_of(self.fn)
        return self._name

    @property
    def state(self) -> str:
        if self._state == PENDING and getattr(self, "_wait", 1) == 0:
            return "ready"
        return STATE_NAMES[self._state]

    def __repr__(self) -> str:
        reads = ", ".join(v.name for v in self.reads)
        writes = ", ".join(v.name for v in self.writes)
        op_id = getattr(self, "id", "?")
        return f"<Op #{op_id} {self.name!r} {self.state} reads=[{reads}] writes=[{writes}]>"


_new = object.__new__


def new_op(fn, reads: tuple, writes: tuple, name, priority: int, always_run: bool, is_async: bool,
           device, kind: str, wcounts) -> Op:
    """The one place an :class:`Op` is built (``Op()`` itself refuses: use ``Engine.push``).

    ``reads`` and ``writes`` are tuples of vars, already checked and folded.
    """
    op = _new(Op)  # Op.__init__ through type() would cost more than the rest of this function
    op.fn = fn
    op._name = name
    op.reads = reads
    op.writes = writes
    op.priority = priority
    op.always_run = always_run
    op.is_async = is_async
    op.device = device
    op.kind = kind
    op.stream = None
    op.error = None
    op._state = PENDING
    op._wcounts = wcounts
    return op


def check_push_args(fn, priority, name) -> None:
    """Raise the error a push's body, priority or name deserves (every engine, before anything is queued)."""
    if not callable(fn):
        raise TypeError(f"fn={fn!r} is not callable")
    if priority.__class__ is not int:
        raise TypeError(f"priority={priority!r} must be an int")
    if name is not None and name.__class__ is not str:
        raise TypeError(f"name={name!r} must be a str or None")


def name_of(fn) -> str:
    """The name an unnamed op takes from its function (a native body's: its C function's)."""
    name = getattr(fn, "__qualname__", None)
    if name is None:
        if fn.__class__ in NATIVE_TYPES:
            return fn.name
        inner = getattr(fn, "func", None)  # functools.partial
        name = getattr(inner, "__qualname__", None) or type(fn).__name__
    return name


class Epoch:
    """Counts the ops pushed between two ``wait_all`` calls that are not finished."""

    __slots__ = ("count", "event")

    def __init__(self) -> None:
        self.count = 0
        # set once wait_all closed this epoch; fired when count drops to 0
        self.event: threading.Event | None = None


class Waiter:
    """A ``wait_for_var`` blocked until ``var.version`` reaches ``target``."""

    __slots__ = ("event", "failure", "target")

    def __init__(self, target: int) -> None:
        self.target = target
        self.event = threading.Event()
        self.failure: BaseException | None = None


class Done:
    """The ``done`` callback an async op receives; callable exactly once."""

    __slots__ = ("_called", "_engine", "_event", "_op")

    def __init__(self, engine, op: Op) -> None:
        self._engine = engine
        self._op = op
        self._called = False
        self._event: threading.Event | None = None

    def __call__(self, error: BaseException | None = None) -> None:
        if error is not None and not isinstance(error, BaseException):
            raise TypeError(f"done(error={error!r}): error must be an exception instance or None")
        engine = self._engine
        op = self._op
        with engine._guard:
            if self._called:
                raise RuntimeError(f"done() was already called for op {op.name!r} (#{op.id})")
            self._called = True
        ready = engine._complete(op, error, error is not None)
        if ready:
            engine._dispatch_all(ready)
        event = self._event
        if event is not None:
            event.set()

    def __repr__(self) -> str:
        return f"<done for op #{self._op.id} {'called' if self._called else 'pending'}>"
