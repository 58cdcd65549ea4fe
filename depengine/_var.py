"""Vars, and the four transitions of a var's queue that every engine uses.

A var keeps the ops that wait to use it in push order, as a queue of groups:
a run of reads, then one write, then a run of reads, ...  The head group holds
the var (``_nread`` readers, or ``_writing``); a group starts when the group
before it has finished.  Four transitions change that state (MXNet names
them the same way; the compiled core mirrors them by name):

- :func:`append_read`:    an op that reads the var is pushed
- :func:`append_write`:   an op that writes the var is pushed
- :func:`complete_read`:  an op that read the var has finished
- :func:`complete_write`: an op that wrote the var has finished

Each is called with the engine's lock held.  A transition that grants the
var to a queued op decrements the op's ``_wait`` counter and, when it reaches
zero, appends the op to ``ready``; the caller dispatches those after
releasing the lock.
"""

from __future__ import annotations

import sys
from abc import ABCMeta
from collections import deque

__all__ = ["NEVER_CLEARED", "Var", "append_read", "append_write", "complete_read", "complete_write"]

# A failure with this clear sequence number is visible to every later op.
NEVER_CLEARED = sys.maxsize


class Var(metaclass=ABCMeta):  # noqa: B024 (an ABC for register(), not for abstract methods)
    """A tag for one resource (an array, a file, an RNG state); it holds no data.

    Create vars with :meth:`Engine.new_var`.  ``version`` counts the write ops
    completed on the var (failed and skipped ones included).  (The compiled
    core's vars are registered as virtual subclasses.)
    """

    __slots__ = (
        "__weakref__",
        "_clear_seq",
        "_deleted_at",
        "_engine",
        "_failure",
        "_gpu",
        "_nread",
        "_pending_writes",
        "_queue",
        "_solo",
        "_waiters",
        "_writing",
        "name",
        "serial",
        "version",
    )

    def __init__(self, *args, **kwargs) -> None:
        raise TypeError("Var cannot be created directly; use Engine.new_var(name)")

    @classmethod
    def _create(cls, engine, name: str, serial: int) -> Var:
        v = object.__new__(cls)
        v.name = name
        v.serial = serial  # unique within its engine, for traces
        v.version = 0
        v._engine = engine
        # Ops waiting for this var, in push order; an op writes it iff self in op.writes.
        # invariant: not _queue or _writing or _nread > 0   (the head waits for someone)
        # invariant: _queue and self not in _queue[0].writes implies _writing
        #            (a read waits only for a write)
        v._queue = deque()
        # invariant: _nread > 0 implies not _writing
        v._nread = 0
        v._writing = False
        # invariant: _pending_writes == int(_writing) + (number of writes in _queue),
        #            counting a composite op (bulk, plan run) once per member writing the var
        v._pending_writes = 0
        # The exception carried by the last write, if it failed or was skipped.
        # Ops with id >= _clear_seq do not see it (a wait reported it to the user).
        v._failure = None
        v._clear_seq = NEVER_CLEARED
        # id of the delete op once delete_var was called; no op may be pushed after it
        v._deleted_at = None
        # _Waiter objects of wait_for_var calls blocked on a pending write
        v._waiters = None
        # GPU completion state, used by the per-device engine only
        v._gpu = None
        # (v,): what a push naming just this var as a list stores, made once
        v._solo = (v,)
        return v

    @property
    def deleted(self) -> bool:
        """True once ``delete_var`` was called (the release itself may be pending)."""
        return self._deleted_at is not None

    @property
    def failed(self) -> bool:
        """True when the var's last completed write failed and no wait has reported it."""
        return self._failure is not None and self._clear_seq == NEVER_CLEARED

    def _state(self) -> dict:
        """The scheduling state, for tests and debugging (the compiled core's vars give the same)."""
        return {"nread": self._nread, "writing": self._writing, "queue": [op.name for op in self._queue],
                "pending_writes": self._pending_writes, "version": self.version}

    def _check_invariants(self) -> None:
        """Raise AssertionError if the var's scheduling state breaks an invariant above."""
        q = self._queue
        if self._nread < 0 or self._pending_writes < 0:
            raise AssertionError(f"{self!r}: negative counter")
        if self._nread and self._writing:
            raise AssertionError(f"{self!r}: readers and a writer at once")
        if q and not (self._writing or self._nread):
            raise AssertionError(f"{self!r}: queue head waits for nobody")
        if q and self not in q[0].writes and not self._writing:
            raise AssertionError(f"{self!r}: a read waits while no write runs")
        queued_writes = sum(1 if op._wcounts is None else op._wcounts[self] for op in q if self in op.writes)
        expected = queued_writes + int(self._writing)
        if self._pending_writes < expected or (not self._writing and self._pending_writes != expected):
            raise AssertionError(f"{self!r}: pending_writes={self._pending_writes} is wrong")

    def __repr__(self) -> str:
        parts = [f"<Var {self.name!r} v{self.version} readers={self._nread} writing={self._writing}"]
        if self._queue:
            parts.append(f"queued={len(self._queue)}")
        if self._failure is not None:
            tag = "failed" if self._clear_seq == NEVER_CLEARED else "failed-reported"
            parts.append(f"{tag}={type(self._failure).__name__}")
        if self._deleted_at is not None:
            parts.append(f"deleted-at=#{self._deleted_at}")
        return " ".join(parts) + ">"


def append_read(v: Var, op) -> bool:
    """AppendRead: ``op`` will read ``v``.  True when granted at once (nothing to wait for)."""
    if v._writing or v._queue:
        v._queue.append(op)
        return False
    v._nread += 1
    return True


def append_write(v: Var, op, count: int) -> bool:
    """AppendWrite: ``op`` will write ``v`` (``count`` writes: a composite op counts each member's).

    True when granted at once.
    """
    v._pending_writes += count
    if v._writing or v._nread or v._queue:
        v._queue.append(op)
        return False
    v._writing = True
    return True


def complete_read(v: Var, ready: list) -> None:
    """CompleteRead: a reader of ``v`` finished; the last one grants a queued write."""
    v._nread -= 1
    if not v._nread and v._queue:  # the head is a write
        nxt = v._queue.popleft()
        v._writing = True
        nxt._wait -= 1
        if not nxt._wait:
            ready.append(nxt)


def complete_write(v: Var, count: int, ready: list) -> None:
    """CompleteWrite: the writer of ``v`` finished (``count`` writes); grant the next group.

    The next group is one write, or every read up to the next write.
    """
    v.version += count
    v._pending_writes -= count
    v._writing = False
    q = v._queue
    if q:
        if v in q[0].writes:
            nxt = q.popleft()
            v._writing = True
            nxt._wait -= 1
            if not nxt._wait:
                ready.append(nxt)
        else:
            while q and v not in q[0].writes:
                nxt = q.popleft()
                v._nread += 1
                nxt._wait -= 1
                if not nxt._wait:
                    ready.append(nxt)
