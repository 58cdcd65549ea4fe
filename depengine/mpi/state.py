"""What every rank of an mpi engine keeps per var, and the small pieces the engine hands out."""

from __future__ import annotations

import numpy as np

from .._device import cpu
from .._op import check_push_args
from .._var import Var
from .errors import MpiUnavailableError
from .wire import MAX_DIMS, dtype_code

__all__ = ["MVar", "RemoteOp", "ThenPoll", "bad_push", "check_buffer", "describe", "import_mpi"]

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

    __slots__ = ("buffer", "gen", "holders", "last", "name", "order", "owner", "raw", "serial", "var",
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
