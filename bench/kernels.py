"""Task kernels: serial numba functions that release the GIL, so workers overlap.

``Kernel(name, iterations)`` runs one of:

``empty``
    nothing at all.
``busy_wait``
    spins ``iterations`` times on a dependent integer update (no memory traffic).
``compute_bound``
    ``iterations`` rounds of multiply-adds on 8 independent float registers.
``memory_bound``
    streams over a private scratch buffer (default 64 KiB) ``iterations`` times.
``load_imbalance``
    ``compute_bound`` with iterations scaled per task by a deterministic factor in [0.5, 1.5).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numba
import numpy as np

__all__ = ["KERNELS", "Kernel"]

KERNELS = ("empty", "busy_wait", "compute_bound", "memory_bound", "load_imbalance")


@numba.njit(nogil=True, cache=True)
def _busy_wait(iterations):
    x = np.uint64(0x9E3779B97F4A7C15)
    for _ in range(iterations):
        x ^= x << np.uint64(13)
        x ^= x >> np.uint64(7)
        x ^= x << np.uint64(17)
    return x


@numba.njit(nogil=True, cache=True)
def _compute_bound(iterations):
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 1.0
    for _ in range(iterations):
        a0 = a0 * 0.999999 + 1e-7
        a1 = a1 * 0.999998 + 2e-7
        a2 = a2 * 0.999997 + 3e-7
        a3 = a3 * 0.999996 + 4e-7
        a4 = a4 * 0.999995 + 5e-7
        a5 = a5 * 0.999994 + 6e-7
        a6 = a6 * 0.999993 + 7e-7
        a7 = a7 * 0.999992 + 8e-7
    return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7


@numba.njit(nogil=True, cache=True)
def _memory_bound(iterations, scratch):
    n = scratch.shape[0]
    half = n // 2
    for _ in range(iterations):
        for k in range(half):
            scratch[k] = scratch[k + half] + 1.0
        for k in range(half):
            scratch[k + half] = scratch[k] * 0.5
    return scratch[0]


_per_thread = threading.local()


def _scratch(nbytes: int) -> np.ndarray:
    """This thread's scratch buffer of ``nbytes`` (one per thread: no false sharing)."""
    buf = getattr(_per_thread, "buf", None)
    if buf is None or buf.nbytes != nbytes // 8 * 8:
        buf = _per_thread.buf = np.zeros(nbytes // 8)
    return buf


def _imbalance_factor(t: int, i: int) -> float:
    h = ((t * 0x9E3779B1) ^ (i * 0x85EBCA77)) & 0xFFFFFFFF
    return 0.5 + h / 2**32


@dataclass
class Kernel:
    """A kernel and its size.  ``run(t, i)`` executes it for task (t, i)."""

    name: str = "empty"
    iterations: int = 0
    scratch_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.name not in KERNELS:
            raise ValueError(f"kernel={self.name!r} is not one of {', '.join(KERNELS)}")
        if self.iterations.__class__ is not int or self.iterations < 0:
            raise ValueError(f"iterations={self.iterations!r} must be an int >= 0")
        if self.scratch_bytes < 16:
            raise ValueError(f"scratch_bytes={self.scratch_bytes!r} must be >= 16")

    def run(self, t: int, i: int) -> None:
        name = self.name
        if name == "empty" or not self.iterations:
            return
        if name == "busy_wait":
            _busy_wait(self.iterations)
        elif name == "compute_bound":
            _compute_bound(self.iterations)
        elif name == "load_imbalance":
            _compute_bound(int(self.iterations * _imbalance_factor(t, i)))
        else:
            _memory_bound(self.iterations, _scratch(self.scratch_bytes))

    def work(self) -> float:
        """Work units per task (iterations; load_imbalance averages 1.0x)."""
        return float(self.iterations)

    def scaled(self, iterations: int) -> Kernel:
        return Kernel(self.name, iterations, self.scratch_bytes)

    def warm_up(self) -> None:
        """Compile (or load from cache) the numba function outside any timing."""
        self.scaled(1).run(0, 0)
