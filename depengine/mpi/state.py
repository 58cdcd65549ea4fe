"""What every rank of an mpi engine keeps per var, and the small pieces the engine hands out."""

from __future__ import annotations

import numpy as np

from .._device import cpu
from .._op import check_push_args
from .._var import Var
from .errors import MpiUnavailableError
from .wire import MAX_DIMS, dtype_code

__all__ = ["MVar", "RemoteOp", "Sequence", "ThenPoll", "VarLookup", "bad_push", "check_buffer", "describe",
           "import_mpi"]

CPU = cpu()


def import_mpi():
    """mpi4py's MPI module, or a clear error saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MpiUnavailableError(
            "Engine('mpi') needs mpi4py and an MPI library: pip install 'depengine[mpi]' "
            f"(or: pip install mpi4py mpich), then start ranks with mpiexec -n N ({exc})") from exc
    return MPI


class MVar:
    """What every rank knows of one var, kept identical on all of them."""

    __slots__ = ("buffer", "gen", "head", "holders", "last", "name", "order", "owner", "raw", "serial", "var",
                 "writer")

    def __init__(self, var: Var, serial: int, owner: int, buffer: np.ndarray | None, everywhere: int) -> None:
        self.var = var          # this rank's local var
        self.name = var.name
        self.serial = serial    # the same on every rank: the var's place in the order of new_var calls
        self.owner = owner
        self.buffer = buffer
        self.order = "F" if buffer is not None and not buffer.flags.c_contiguous else "C"
        self.raw = None if buffer is None else buffer.reshape(-1, order="A").view(np.uint8)
        self.gen = 0            # writes pushed so far
        # bit r set: rank r's copy is version gen
        # invariant: holders >> owner & 1  (the owner always ends up with the latest version)
        self.holders = everywhere if buffer is not None and everywhere else 1 << owner
        self.writer = "(initial value)"  # name of the op that pushed the last write
        self.last = None        # this rank's local op of that write, when this rank ran it
        self.head = None        # its transfers' header on the lane (lane.py), once made


class Sequence:
    """The op sequence a rank pushed: the same on every rank (in C: ``_core.MpiPusher``)."""

    __slots__ = ("count", "first", "hash", "last", "since_sync")

    def __init__(self) -> None:
        self.count = 0          # pushes and new_var calls so far
        self.hash = 0           # their running hash
        self.since_sync = 0     # pushes since the last collective check
        self.first = self.last = None  # (what, rank or None, count) of the first and last push since then


class ThenPoll:
    """An op's function, then a look at MPI: on a busy rank, the worker takes arrived messages itself."""

    __slots__ = ("fn", "poll")

    def __init__(self, fn, poll) -> None:
        self.fn, self.poll = fn, poll

    def __call__(self, ctx) -> None:
        self.fn(ctx)
        self.poll()


class RemoteOp:
    """What ``push`` returns on a rank that does not run the op: it runs on rank ``rank``."""

    __slots__ = ("meta", "name", "rank")  # meta: what ops/ attaches to every op it pushes
    state = "remote"
    error = None

    def __init__(self, name: str, rank: int) -> None:
        self.name = name
        self.rank = rank

    def __repr__(self) -> str:
        return f"<RemoteOp {self.name!r} on rank {self.rank}>"


def bad_push(fn, priority, name, device, kind) -> None:
    """Raise the error that a push's arguments deserve."""
    check_push_args(fn, priority, name)
    if device is not None and device != CPU:
        raise ValueError(f"device={device!r}: Engine('mpi') runs ops on cpu() only")
    raise ValueError(f"kind={kind!r} must be one of 'normal', 'prioritized', 'copy', 'async'")


def describe(desc) -> str:
    if desc is None:
        return "(none)"
    what, x, count = desc
    return f"{what} (#{count})" if x is None else f"{what!r} on rank {x} (#{count})"


def check_buffer(buffer, name) -> None:
    if not isinstance(buffer, np.ndarray):
        raise TypeError(f"new_var({name!r}): buffer={type(buffer).__name__} must be a NumPy array or None")
    if not (buffer.flags.c_contiguous or buffer.flags.f_contiguous):
        raise ValueError(f"new_var({name!r}): the buffer must be contiguous (np.ascontiguousarray)")
    if not buffer.flags.writeable:
        raise ValueError(f"new_var({name!r}): the buffer must be writeable (received data lands in it)")
    if buffer.ndim > MAX_DIMS:
        raise ValueError(f"new_var({name!r}): buffers of more than {MAX_DIMS} dimensions are not supported")
    try:
        dtype_code(buffer.dtype)
    except ValueError as exc:
        raise ValueError(f"new_var({name!r}): {exc}") from None


_SEQ = (list, tuple)


class VarLookup:
    """The mpi engine's vars of a push, looked up in ``self._vars`` (``self._mvar`` names a bad one)."""

    def _mvars_of(self, writes, reads) -> tuple[list[MVar], list[MVar]]:
        """The vars of a push, duplicates collapsed and writes out of the reads (the common case
        in one pass; anything unusual through _as_mvars, which names the bad input)."""
        get = self._vars.get
        if writes.__class__ not in _SEQ and isinstance(writes, Var):  # (an ABC: isinstance is slow)
            writes = (writes,)
        if reads.__class__ not in _SEQ and isinstance(reads, Var):
            reads = (reads,)
        if writes.__class__ in _SEQ and reads.__class__ in _SEQ:
            try:
                ws = [get(v) for v in writes]
                rs = [get(v) for v in reads]
            except TypeError:  # unhashable: not a Var
                ws = rs = [None]
            if None not in ws and None not in rs:
                n = len(ws)
                if n > 1 and (ws[0] is ws[1] if n == 2 else len(set(ws)) != n):
                    ws = list(dict.fromkeys(ws))
                n = len(rs)
                if n > 1 and len(set(rs)) != n:
                    rs = list(dict.fromkeys(rs))
                if ws and rs:
                    rs = [mv for mv in rs if mv not in ws]
                return ws, rs
        ws, rs = self._as_mvars(writes, "writes"), self._as_mvars(reads, "reads")
        return ws, [mv for mv in rs if mv not in ws]

    def _as_mvars(self, vs, role: str) -> list[MVar]:
        if vs.__class__ is not list and vs.__class__ is not tuple:
            if isinstance(vs, Var):
                vs = (vs,)
            elif isinstance(vs, (set, frozenset)):
                vs = tuple(vs)
            else:
                raise TypeError(f"{role}={vs!r} must be a list or tuple of Var")
        get = self._vars.get
        try:
            out = [get(v) for v in vs]
        except TypeError:  # unhashable: not a Var
            out = [None]
        if None in out:
            out = [self._mvar(v, role) for v in vs]
        n = len(out)
        if n > 1 and (out[0] is out[1] if n == 2 else len(set(out)) != n):
            out = list(dict.fromkeys(out))
        return out
