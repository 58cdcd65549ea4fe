"""Host memory of CPU arrays: a bounded pool of large buffers, reused by size.

A CPU array owns its memory through a *store* shared by its views, kept
alive by the array, its views and every op that uses them.  Small arrays
(under ``POOL_MIN`` bytes, a page) are plain NumPy allocations: their store
is the NumPy array itself, freed when the last user lets go.  Larger arrays
come from the pool: their store is a :class:`PooledStore` whose finaliser
hands the buffer back once the array, its views and every op using them
have let go, so the next array of that size reuses memory that is already
mapped (no page faults, no zeroing).

Nothing is pushed to the engine to release an array: the op that used a
buffer last drops the last reference to its store.  A thread that pushes
far ahead of the workers would otherwise allocate (and fault in) fresh
memory for every result; when ``IN_FLIGHT`` buffers of one size are in use
it waits (at most ``PATIENCE`` seconds) for the next one to come back, so a
long chain cycles through a few buffers.  On the compiled core the waiting
pusher wakes as soon as one of the engine's ops finishes (``drain(wait)``);
looking every ``POLL`` s instead cost a chain of 30 000-element ops 85 us an
op against 12.  With no op pending the buffers in use are the user's, and it
does not wait; a wait that times out stops the waits for that size until one
comes back.  A buffer is reused only when nothing else refers to it (a NumPy
view handed out through DLPack, say), checked when it is taken.  The pool is
bounded: at most ``PER_SIZE`` buffers per size and ``limit`` bytes in all
(``set_pool_limit``); a buffer that does not fit is freed at once, and
``trim()`` frees them all.  Large pooled buffers are anonymous mappings of
their own, so freeing one gives its memory back to the system whatever
``malloc`` would have kept; those under ``MAP_MIN`` bytes come from
``malloc`` (a mapping each would soon reach the kernel's limit on mappings
per process; ``trim()`` gives those back to ``malloc``, which may keep
them).  Without the pool, a pusher ahead of the workers would take fresh
heap for every result of a cheap chain, and the ops that let go of them in
bursts would make ``malloc`` give it back and fault it in again: 5000-element
chains ran 5x slower.

The free lists and the store are C (``ops/_pool.c``, in ``ops._native``):
taking and giving back a buffer costs a pusher a fraction of a microsecond
instead of two.  Without the extension (or under ``DEPENGINE_PURE_PYTHON``)
``_Pool`` does the same in Python.
"""

from __future__ import annotations

import mmap
import sys
import threading
import time

import numpy as np

from ._kernels import CALLS, address

__all__ = ["POOL_MIN", "PooledStore", "alloc", "pool_stats", "set_pool_limit", "stalled", "trim"]

POOL_MIN = 4 * 1024        # bytes: smaller arrays are plain NumPy allocations (malloc reuses them cheaply)
MAP_MIN = 256 * 1024       # bytes: pooled buffers this big are mappings of their own, smaller ones malloc's
ALIGN = 64                 # bytes: a malloc'd pooled buffer starts on a cache line
PER_SIZE = 64              # buffers kept per size (a pusher far ahead frees them in bursts)
IN_FLIGHT = 8              # pooled buffers of one size in use past which a pusher waits for one
PATIENCE = 0.05            # seconds it waits before it allocates anyway
POLL = 0.0005              # seconds between looks at the engine's finished ops while it waits
_DEFAULT_LIMIT = 256 * 2**20


class _Pool:
    """The free lists in Python (without the C extension): what ``ops/_pool.c`` does, method for method.

    Every method is thread-safe (ops end on worker threads); none waits.
    """

    def __init__(self) -> None:
        self.limit = _DEFAULT_LIMIT
        self.per_size = PER_SIZE
        self.free: dict[int, list] = {}  # nbytes -> [(owner, address, nbytes)], most recent last
        self.bytes = 0
        self.live: dict[int, int] = {}  # nbytes -> pooled buffers in use
        self.stalled: set[int] = set()  # sizes whose buffers did not come back while a pusher waited
        self.hits = self.misses = self.dropped = 0
        self.waiting = 0  # pushers in _take_slow waiting for a buffer to come back
        # reentrant: a store's finaliser may run (garbage collection) while this thread holds it
        self.lock = threading.RLock()

    def pool_take(self, nbytes: int):
        with self.lock:
            entries = self.free.get(nbytes)
            while entries:
                entry = entries.pop()
                self.bytes -= nbytes
                # the list gave up its reference: the entry and getrefcount's argument remain
                if sys.getrefcount(entry[0]) == _FREE_REFS:
                    self.hits += 1
                    self.live[nbytes] += 1
                    return entry
                self.dropped += 1  # someone still looks at it (an exported view): never reuse it
        return None

    def pool_taken(self, nbytes: int, stalled: bool) -> None:
        with self.lock:
            self.misses += 1
            self.live[nbytes] = self.live.get(nbytes, 0) + 1
            if stalled:
                self.stalled.add(nbytes)

    def pool_give(self, entry) -> bool:
        nbytes = entry[2]
        with self.lock:
            self.live[nbytes] -= 1
            self.stalled.discard(nbytes)
            entries = self.free.setdefault(nbytes, [])
            if len(entries) >= self.per_size or self.bytes + nbytes > self.limit:
                self.dropped += 1
                return False  # freed when the caller's reference goes
            entries.append(entry)
            self.bytes += nbytes
            return True

    def pool_live(self, nbytes: int) -> tuple[int, bool]:
        with self.lock:
            return self.live.get(nbytes, 0), nbytes in self.stalled

    def pool_stats(self) -> dict:
        with self.lock:
            return {"bytes": self.bytes, "buffers": sum(map(len, self.free.values())), "limit": self.limit,
                    "hits": self.hits, "misses": self.misses, "dropped": self.dropped}

    def pool_trim(self) -> None:
        with self.lock:
            gone = self.free
            self.free = {}
            self.bytes = 0
        del gone  # (outside the lock)

    def pool_configure(self, limit: int, per_size: int, notify) -> None:
        self.limit, self.per_size = limit, per_size

    def pool_waiting(self, delta: int) -> None:
        with self.lock:
            self.waiting += delta


def _free_refs() -> int:
    """``sys.getrefcount`` of a free buffer inside ``_Pool.pool_take`` (measured, not assumed)."""
    probe = _Pool()
    owner = np.empty(16, np.uint8)
    probe.live[16] = 1
    probe.pool_give((owner, 0, 16))
    entry = probe.free[16].pop()
    del owner
    return sys.getrefcount(entry[0])


_FREE_REFS = _free_refs()


def _implementation():
    """``ops._native``'s pool and store when the C extension is there, else the Python ones."""
    if CALLS == "C":
        from . import _native

        return _native, _native.Store
    pool = _Pool()

    class PooledStore:
        """Keeps a pooled buffer alive for an array, its views and its ops; gives it back after."""

        __slots__ = ("entry",)

        def __init__(self, entry) -> None:
            self.entry = entry

        def __del__(self) -> None:
            if pool.pool_give(self.entry) and pool.waiting:
                _notify()
    return pool, PooledStore


_returned = threading.Condition(threading.RLock())  # a buffer came back while a pusher waited
_waits = [0]


def _notify() -> None:
    with _returned:
        _returned.notify_all()


_pool, PooledStore = _implementation()
_pool.pool_configure(_DEFAULT_LIMIT, PER_SIZE, _notify)
_take = _pool.pool_take


def _take_slow(nbytes: int, drain):
    """A buffer of ``nbytes`` when none was free: waited for while the pusher is far ahead, else new.

    ``drain`` releases the finished ops of the engine the buffer is for: the
    compiled core leaves ops that ran native bodies for the pushing thread to
    release, so a pusher waiting for buffers to come back releases them
    itself.  ``drain(wait)`` first sleeps until one of its ops finishes (the
    compiled core; True), or cannot (None): then the buffers' return wakes
    the pusher (``_notify``).  False: the engine has no op pending, so the
    buffers in use are the user's and the wait ends at once; else at most
    ``PATIENCE`` s later.
    """
    live, stalled = _pool.pool_live(nbytes)
    entry = None
    if live >= IN_FLIGHT and not stalled:
        # The pusher is far ahead of the workers: buffers of this size come back as the ops
        # using them end.  Take the next one rather than touch fresh memory; if none comes back
        # in time (the user holds them), stop waiting for this size until one does.
        _waits[0] += 1
        deadline = time.monotonic() + PATIENCE
        _pool.pool_waiting(1)
        try:
            if drain is not None:
                drain()  # (and drain(wait) below releases what finished while it slept)
            while True:
                entry = _take(nbytes)
                left = deadline - time.monotonic()
                if entry is not None or left <= 0:
                    break
                waited = None if drain is None else drain(min(left, POLL))
                if waited:
                    continue  # an op finished (or POLL passed): what it held may be back
                if waited is False:  # no op is pending: only the user can give one back
                    entry = _take(nbytes)  # (or one an op let go of just now)
                    break
                with _returned:  # (a buffer given back between the look and this wait notifies it)
                    entry = _take(nbytes)
                    if entry is not None:
                        break
                    _returned.wait(left if drain is None else min(left, POLL))
        finally:
            _pool.pool_waiting(-1)
        if entry is not None:
            return entry
        stalled = True
    if nbytes >= MAP_MIN:  # its own mapping: unmapped (given back to the system) once nothing holds it
        owner = np.frombuffer(mmap.mmap(-1, nbytes), np.uint8)
    else:  # malloc'd, cache-line aligned; through a memoryview, so views of it keep it as their base
        raw = np.empty(nbytes + ALIGN, np.uint8)
        skip = -address(raw) % ALIGN
        owner = np.frombuffer(memoryview(raw)[skip:skip + nbytes], np.uint8)
    _pool.pool_taken(nbytes, stalled)
    return owner, address(owner), nbytes


def alloc(shape: tuple, dtype: np.dtype, size: int, drain=None):
    """``(data, store, address)`` of a new C-contiguous host array (``drain``: see ``_take_slow``)."""
    nbytes = size * dtype.itemsize
    if nbytes < POOL_MIN:  # (read at each call: tests lower it)
        data = np.empty(shape, dtype)
        return data, data, address(data) if nbytes else 0
    entry = _take(nbytes)
    if entry is None:
        entry = _take_slow(nbytes, drain)
    data = np.frombuffer(entry[0], dtype)  # (1-d already: the buffer holds ``size`` elements)
    return data if len(shape) == 1 else data.reshape(shape), PooledStore(entry), entry[1]


def stalled(nbytes: int) -> bool:
    """Whether pushers stopped waiting for buffers of ``nbytes`` (until one comes back)."""
    return _pool.pool_live(nbytes)[1]


def set_pool_limit(nbytes: int) -> None:
    """Keep at most ``nbytes`` of free buffers (0: keep none); frees what no longer fits."""
    if nbytes.__class__ is not int or nbytes < 0:
        raise ValueError(f"set_pool_limit({nbytes!r}): expected an int >= 0")
    _pool.pool_configure(nbytes, PER_SIZE, _notify)
    if _pool.pool_stats()["bytes"] > nbytes:
        _pool.pool_trim()


def trim() -> None:
    """Free every buffer the pool keeps."""
    _pool.pool_trim()


def pool_stats() -> dict:
    """``bytes`` and ``buffers`` kept, ``limit``, and ``hits``, ``misses``, ``dropped`` and ``waits``
    (a pusher far ahead waited for a buffer to come back) so far."""
    return {**_pool.pool_stats(), "waits": _waits[0]}
