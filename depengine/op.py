"""Ops, the context an op's function receives, and the small records the engine keeps."""

from __future__ import annotations

import threading

__all__ = ["Op", "RunContext"]

# Op._state values.  "pending" and "ready" are told apart by Op._wait.
PENDING, RUNNING, DONE, FAILED, SKIPPED = range(5)
_STATE_NAMES = ("pending", "running", "done", "failed", "skipped")


class RunContext:
    """What an op's function receives as ``ctx``.

    ``op_name`` and ``op_id`` name the op; ``device`` is where it runs;
    ``stream`` is the GPU stream to enqueue work on (``None`` for CPU ops).
    The engine passes the op itself, which is a ``RunContext``: that costs
    nothing per op.
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
        "_epoch",
        "_wcounts",
        "meta",
        "_lane",
        "_t_push",
        "_t_start",
        "_t_thread",
        "_name",
        "_rec",
        "_state",
        "_wait",
        "always_run",
        "device",
        "error",
        "fn",
        "id",
        "is_async",
        "kind",
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
        return _STATE_NAMES[self._state]

    def __repr__(self) -> str:
        reads = ", ".join(v.name for v in self.reads)
        writes = ", ".join(v.name for v in self.writes)
        op_id = getattr(self, "id", "?")
        return f"<Op #{op_id} {self.name!r} {self.state} reads=[{reads}] writes=[{writes}]>"


class _BulkMember(Op):
    """An op pushed inside ``Engine.bulk()``: a plain synchronous CPU op.

    What every such op shares is read from the class, so a bulked push
    stores five fewer fields.  Nothing writes these on a member.
    """

    __slots__ = ()
    __init__ = object.__init__  # the engine calls _BulkMember(): cheaper than object.__new__(cls)
    is_async = False
    kind = "normal"
    stream = None
    _wcounts = None
    device = None  # set to cpu() by the engine module (op.py imports no device code)


def name_of(fn) -> str:
    """The name an unnamed op takes from its function."""
    name = getattr(fn, "__qualname__", None)
    if name is None:
        inner = getattr(fn, "func", None)  # functools.partial
        name = getattr(inner, "__qualname__", None) or type(fn).__name__
    return name


class _Epoch:
    """Counts the ops pushed between two ``wait_all`` calls that are not finished."""

    __slots__ = ("count", "event")

    def __init__(self) -> None:
        self.count = 0
        # set once wait_all closed this epoch; fired when count drops to 0
        self.event: threading.Event | None = None


class _Waiter:
    """A ``wait_for_var`` blocked until ``var.version`` reaches ``target``."""

    __slots__ = ("event", "failure", "target")

    def __init__(self, target: int) -> None:
        self.target = target
        self.event = threading.Event()
        self.failure: BaseException | None = None
