"""What every ops/ function shares: the engine, storage, dtypes, deferred frees.

CPU memory needs nothing from the engine: ops keep the stores they use
alive, and the last of them lets go (see ``ops.memory``).  GPU memory must
be freed in stream order after the last op using it: when a device store is
garbage collected (its arrays and their ops are gone), its var is deleted
with ``Engine.delete_var`` and the buffer freed by that delete.  A finaliser
can run anywhere (even inside the engine while it holds its lock), so it
only queues the release; the next ops/ call, from user code, hands the
queue to the engine.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from types import MappingProxyType

import numpy as np

import depengine as de

__all__ = ["CPU_DTYPES", "DeviceStore", "Elementwise", "Record", "check_dtype", "engine", "engine_caches",
           "flush_releases",
           "holding_releases", "push", "push_recorded", "queue_release", "runtime", "set_engine", "tape"]

CPU_DTYPES = tuple(np.dtype(t) for t in (np.bool_, np.int32, np.int64, np.float32, np.float64))
GPU_DTYPES = tuple(np.dtype(t) for t in (np.bool_, np.int64, np.float32, np.float64))  # int64: argmax

_engine: de.Engine | None = None
_default: de.Engine | None = None  # depengine.default_engine(), remembered
_releases: deque = deque()
_held = 0  # > 0 while a plan is being recorded by ops/ (hybridize, load_plan): releases wait

engine_caches: list[dict] = []  # cleared by set_engine (ops.math's fast path registers its own)

tape = None
"""Autograd's one hook into the front end.

``ops.autograd`` sets it (to a callable) while anything may need it: a
``record()`` block, or a tape still holding arrays it needs.  Every front-end
operation calls ``tape(record, inplace)`` before it pushes anything, where
``inplace`` says that the operation writes into an array that existed
before (``out=``, ``+=``, ``x[...] = v``); the hook may raise, and then
nothing is pushed.
"""


_NO_ATTRS = MappingProxyType({})


class Record:
    """What one front-end operation does: its op's ``meta``.

    ``op`` names the operation (one of the fixed set the front end offers),
    ``inputs`` are its operands (arrays, and scalars already cast to the
    type the kernel takes), ``out`` the array it writes and ``attrs`` its
    other arguments.  Autograd tapes records and a saved plan is a list of
    them; a view (reshape, transpose, indexing) has a record too, pushed
    nowhere.
    """

    __slots__ = ("attrs", "inputs", "op", "out")

    def __init__(self, op: str, inputs: tuple, out, attrs: dict | None = None) -> None:
        self.op, self.inputs, self.out, self.attrs = op, inputs, out, attrs or _NO_ATTRS

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.op} -> {self.out!r}>"


class Elementwise(Record):
    """The record of an elementwise op, which the plan fuser reads (``ops.fusion``).

    ``work`` is the dtype it computes in; ``inputs`` hold the arrays (and so
    their memory) for as long as the op lives.
    """

    __slots__ = ("shape", "work")

    def __init__(self, op, inputs, out, work) -> None:
        self.op, self.inputs, self.out, self.work, self.shape = op, inputs, out, work, out.shape
        self.attrs = _NO_ATTRS


def engine() -> de.Engine:
    """The engine ops/ pushes to: ``set_engine``'s, else ``depengine.default_engine()``."""
    global _default
    eng = _engine
    if eng is None or eng.closed:
        eng = _default
        if eng is None or eng.closed:  # a forked child's copy is closed too: it gets a new one
            eng = _default = de.default_engine()
    return eng


def set_engine(eng: de.Engine | None) -> None:
    """Push ops/ work to ``eng`` from now on (None: back to the default engine)."""
    global _engine
    if eng is not None and not isinstance(eng, de.Engine):
        raise TypeError(f"set_engine({eng!r}): expected a depengine.Engine or None")
    _engine = eng
    for cache in engine_caches:  # what the front end found for the engine it pushed to
        cache.clear()


def runtime(eng: de.Engine, device: de.Device):
    """The GPU runtime that runs ``device``'s ops on ``eng``."""
    return eng.gpu_runtime(device)


def check_dtype(dtype, device) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype={dtype!r} is not a NumPy dtype") from None
    allowed = GPU_DTYPES if device.type == "gpu" else CPU_DTYPES
    if dt not in allowed:
        names = ", ".join(d.name for d in allowed)
        raise TypeError(f"dtype {dt.name} is not supported on {device}; supported: {names}")
    return dt


class DeviceStore:
    """Device memory shared by an array and its views; allocated by the op that first writes it."""

    __slots__ = ("borrowed", "buf", "device", "nbytes", "owner")

    def __init__(self, device: int, nbytes: int, borrowed: bool = False) -> None:
        self.device = device
        self.nbytes = nbytes
        self.buf = None
        self.borrowed = borrowed  # memory of another library (DLPack): never freed here
        self.owner = None  # (engine, var) of the array that allocated it

    def __del__(self) -> None:
        if self.owner is not None:
            queue_release(*self.owner, self)

    def ensure(self, rt, stream):
        if self.buf is None:
            self.buf = rt.alloc(self.device, self.nbytes, stream)
        return self.buf


def queue_release(eng, var, store) -> None:
    """Called from ``__del__``: remember to delete ``var`` (and free ``store``) later."""
    _releases.append((eng, var, store))


def flush_releases() -> None:
    """Hand queued releases to their engines (from user code, never from inside the engine).

    While ops/ records a plan (``holding_releases``) they wait: a delete pushed
    then would be recorded into the plan and replayed.
    """
    while _releases and not _held:
        try:
            eng, var, store = _releases.popleft()
        except IndexError:
            return
        if eng.closed or var.deleted:
            continue
        free = None
        if not store.borrowed:
            rt = runtime(eng, de.Device("gpu", store.device))

            def free(store=store, rt=rt):
                if store.buf is not None:
                    rt.free(store.buf, None)
                    store.buf = None
        try:
            eng.delete_var(var, on_delete=free)
        except de.EngineClosedError:
            pass


@contextmanager
def holding_releases():
    """Queue releases instead of pushing them while the block records a plan."""
    global _held
    _held += 1
    try:
        yield
    finally:
        _held -= 1


def push_recorded(fn, rec: Record, inplace: bool, name: str) -> None:
    """Push ``fn`` reading ``rec``'s arrays and writing its output, with ``rec`` as the op's meta, after
    showing ``rec`` to autograd's hook (``inplace``: ``rec.out`` existed before)."""
    if tape is not None:
        tape(rec, inplace)
    arrays = [x for x in rec.inputs if x.__class__ is rec.out.__class__]  # (NDArray: ops.array imports this)
    push(fn, arrays, [rec.out], name, rec.out.device, meta=rec)


def push(fn, reads, writes, name: str, device, kind: str = "normal", priority: int = 0, meta=None,
         execute_on: int | None = None):
    """Push ``fn`` reading and writing arrays (by their vars) on their engine.

    ``meta`` describes an elementwise op for recorded plans (see ops.fusion);
    such ops are pure: they do nothing but write their output.  ``execute_on``:
    the rank that runs it on an mpi engine (default: the owner of ``writes``).
    """
    flush_releases()
    eng = (writes[0] if writes else reads[0])._engine
    where = {} if execute_on is None else {"execute_on": execute_on}
    op = eng.push(fn, reads=[a._var for a in reads], writes=[a._var for a in writes], name=name,
                  device=None if device.type == "cpu" else device, kind=kind, priority=priority,
                  pure=meta is not None, **where)
    if meta is not None:  # what a recorded plan's fuser reads (op.meta is released with the op)
        op.meta = meta
    return op
