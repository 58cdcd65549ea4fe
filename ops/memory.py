"""Host memory of CPU arrays: a bounded pool of large buffers, reused by size.

A CPU array owns its memory through a *store* shared by its views, kept
alive by the array, its views and every op that uses them.  Small arrays (under ``POOL_MIN`` bytes) are
plain NumPy allocations: their store is the NumPy array itself, freed when
the last user lets go.  Larger arrays come from the pool: their store is a
:class:`PooledStore` whose finaliser hands the buffer back once the array,
its views and every op using them have let go, so the next array of that
size reuses memory that is already mapped (no page faults, no zeroing).

Nothing is pushed to the engine to release an array: the op that used a
buffer last drops the last reference to its store.  A thread that pushes
far ahead of the workers would otherwise allocate (and fault in) fresh
memory for every result; when ``IN_FLIGHT`` buffers of one size are in use
it waits (at most ``PATIENCE`` seconds) for the next one to come back, so a
long chain cycles through a few buffers.  A wait that times out (the user
holds the buffers) stops the waits for that size until one comes back.  A buffer is reused only
when nothing else refers to it (a NumPy view handed out through DLPack, say),
checked when it is taken.  The pool is bounded: at most ``PER_SIZE`` buffers
per size and ``limit`` bytes in all (``set_pool_limit``); a buffer that does
not fit is freed at once, and ``trim()`` frees them all.  Pooled buffers are
anonymous mappings of their own, so freeing one gives its memory back to
the system whatever ``malloc`` would have kept.
"""

from __future__ import annotations

import mmap
import sys
import threading
import time

import numpy as np

from ._kernels import address

__all__ = ["POOL_MIN", "PooledStore", "alloc", "pool_stats", "set_pool_limit", "trim"]

POOL_MIN = 64 * 1024       # bytes: smaller arrays are plain NumPy allocations (malloc reuses them cheaply)
PER_SIZE = 64              # buffers kept per size (a pusher far ahead frees them in bursts)
IN_FLIGHT = 8              # pooled buffers of one size in use past which a pusher waits for one
PATIENCE = 0.05            # seconds it waits before it allocates anyway
POLL = 0.0005              # seconds between looks at the engine's finished ops while it waits
_DEFAULT_LIMIT = 256 * 2**20


class _Pool:
    """Free buffers by size in bytes; every method is thread-safe (ops end on worker threads)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.free: dict[int, list] = {}  # nbytes -> [(owner, address)], most recent last
        self.bytes = 0
        self.live: dict[int, int] = {}  # nbytes -> pooled buffers in use
        self.stalled: set[int] = set()  # sizes whose buffers did not come back while a pusher waited
        self.hits = self.misses = self.dropped = self.waits = 0
        self.waiting = 0  # pushers in take() waiting for a buffer to come back
        # reentrant: a store's finaliser may run (garbage collection) while this thread holds it
        self.lock = threading.RLock()
        self.returned = threading.Condition(self.lock)

    def take(self, nbytes: int, drain=None):
        """A free buffer of ``nbytes`` (``(owner, address)``), or None: allocate one.

        ``drain`` releases the finished ops of the engine the buffer is for:
        the compiled core leaves ops that ran native bodies for the pushing
        thread to release, so a pusher waiting for buffers to come back
        releases them itself.
        """
        with self.lock:
            entries = self.free.get(nbytes)
            if entries:  # the common case: a free buffer nothing else refers to
                entry = entries.pop()
                self.bytes -= nbytes
                if sys.getrefcount(entry[0]) == _FREE_REFS:
                    self.hits += 1
                    self.live[nbytes] += 1
                    return entry
                self.dropped += 1
            entry = self._pop(nbytes)
            if entry is None and self.live.get(nbytes, 0) >= IN_FLIGHT and nbytes not in self.stalled:
                # The pusher is far ahead of the workers: buffers of this size come back as the
                # ops using them end.  Take the next one rather than touch fresh memory; if none
                # comes back in time (the user holds them), stop waiting for this size until one does.
                self.waits += 1
                entry = self._wait_for(nbytes, drain)
                if entry is None:
                    self.stalled.add(nbytes)
            if entry is None:
                self.misses += 1
            else:
                self.hits += 1
            self.live[nbytes] = self.live.get(nbytes, 0) + 1
        return entry

    def _wait_for(self, nbytes: int, drain):
        """Wait at most ``PATIENCE`` s for a buffer of ``nbytes`` to come back (lock held)."""
        deadline = time.monotonic() + PATIENCE
        self.waiting += 1
        try:
            while True:
                if drain is not None:
                    drain()  # (its finalisers give buffers back through this reentrant lock)
                entry = self._pop(nbytes)
                left = deadline - time.monotonic()
                if entry is not None or left <= 0:
                    return entry
                # Python bodies give their buffers back from the workers (and notify); native ones
                # end without a word, so look again after a short while
                self.returned.wait(left if drain is None else min(left, POLL))
        finally:
            self.waiting -= 1

    def _pop(self, nbytes: int):
        entries = self.free.get(nbytes)
        while entries:
            entry = entries.pop()
            self.bytes -= nbytes
            # the list gave up its reference: the entry and getrefcount's argument remain
            if sys.getrefcount(entry[0]) == _FREE_REFS:
                return entry
            self.dropped += 1  # someone still looks at it (an exported view): never reuse it
        return None

    def give(self, entry) -> None:
        nbytes = entry[0].nbytes
        with self.lock:
            self.live[nbytes] -= 1
            self.stalled.discard(nbytes)
            entries = self.free.setdefault(nbytes, [])
            if len(entries) >= PER_SIZE or self.bytes + nbytes > self.limit:
                self.dropped += 1
                return  # freed when the caller's reference goes
            entries.append(entry)
            self.bytes += nbytes
            if self.waiting:
                self.returned.notify()

    def trim(self) -> None:
        with self.lock:
            self.free.clear()
            self.bytes = 0


def _free_refs() -> int:
    """``sys.getrefcount`` of a free buffer inside ``_Pool.take`` (measured, not assumed)."""
    probe = _Pool(1 << 30)
    owner = np.empty(16, np.uint8)
    probe.live[16] = 1
    probe.give((owner, 0))
    entry = probe.free[16].pop()
    del owner
    return sys.getrefcount(entry[0])


_FREE_REFS = _free_refs()
_pool = _Pool(_DEFAULT_LIMIT)


class PooledStore:
    """Keeps a pooled buffer alive for an array, its views and its ops; gives it back after."""

    __slots__ = ("entry",)

    def __init__(self, entry) -> None:
        self.entry = entry  # (owner uint8 array, its address)

    def __del__(self) -> None:
        _pool.give(self.entry)


def alloc(shape: tuple, dtype: np.dtype, size: int, drain=None):
    """``(data, store, address)`` of a new C-contiguous host array (``drain``: see ``_Pool.take``)."""
    nbytes = size * dtype.itemsize
    if nbytes < POOL_MIN:  # (read at each call: tests lower it)
        data = np.empty(shape, dtype)
        return data, data, address(data) if nbytes else 0
    entry = _pool.take(nbytes, drain)
    if entry is None:  # its own mapping: unmapped (given back to the system) once nothing holds it
        owner = np.frombuffer(mmap.mmap(-1, nbytes), np.uint8)
        entry = (owner, address(owner))
    return entry[0].view(dtype).reshape(shape), PooledStore(entry), entry[1]


def set_pool_limit(nbytes: int) -> None:
    """Keep at most ``nbytes`` of free buffers (0: keep none); frees what no longer fits."""
    if nbytes.__class__ is not int or nbytes < 0:
        raise ValueError(f"set_pool_limit({nbytes!r}): expected an int >= 0")
    _pool.limit = nbytes
    if _pool.bytes > nbytes:
        _pool.trim()


def trim() -> None:
    """Free every buffer the pool keeps."""
    _pool.trim()


def pool_stats() -> dict:
    """``bytes`` and ``buffers`` kept, ``limit``, and ``hits``, ``misses``, ``dropped`` and ``waits``
    (a pusher far ahead waited for a buffer to come back) so far."""
    with _pool.lock:
        return {"bytes": _pool.bytes, "buffers": sum(map(len, _pool.free.values())), "limit": _pool.limit,
                "hits": _pool.hits, "misses": _pool.misses, "dropped": _pool.dropped, "waits": _pool.waits}
