"""Whole-array sums and means of contiguous float arrays as native op bodies.

``x.sum()`` and ``x.mean()`` over every element of a contiguous float32 or
float64 array are one cfunc call on a small block (the array's address and
size, the result's address, the count a mean divides by), so on the compiled
core a worker runs them without the GIL, like the elementwise kernels.  The
sum is NumPy's pairwise summation step for step (eight accumulators over
blocks of at most 128 elements, halves split on a multiple of eight), so it
gives NumPy's bits, not merely NumPy's accuracy; ``tests/test_ops_fast.py``
checks that against ``numpy.add.reduce``.
"""

from __future__ import annotations

import struct
import threading

import numba
import numpy as np

from ._kernels import _SIG, _events, as_voidptr

__all__ = ["pairwise", "sum_block", "sum_entry"]

_BLOCK = struct.Struct("<4q")  # array address, size, result address, count to divide by (0: a sum)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _block_sum(x, lo, n, zero):
    """NumPy's sum of a block of at most 128 elements: eight accumulators (fewer than 8: in turn)."""
    if n < 8:
        res = zero
        for i in range(n):
            res += x[lo + i]
        return res
    r0, r1, r2, r3 = x[lo], x[lo + 1], x[lo + 2], x[lo + 3]
    r4, r5, r6, r7 = x[lo + 4], x[lo + 5], x[lo + 6], x[lo + 7]
    i = 8
    end = n - n % 8
    while i < end:
        j = lo + i
        r0 += x[j]
        r1 += x[j + 1]
        r2 += x[j + 2]
        r3 += x[j + 3]
        r4 += x[j + 4]
        r5 += x[j + 5]
        r6 += x[j + 6]
        r7 += x[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += x[lo + i]
        i += 1
    return res


@numba.njit(nogil=True, cache=True, error_model="numpy")
def pairwise(x, lo, n, zero):
    """NumPy's pairwise sum of ``x[lo:lo + n]`` (``zero``: 0 of ``x``'s dtype, which it adds in).

    Above 128 elements NumPy sums the two halves (the first a multiple of 8
    long) and adds them; this walks the same tree with a stack of its own
    (numba's cache cannot hold a recursive function)."""
    if n <= 128:
        return _block_sum(x, lo, n, zero)
    los = np.empty(64, np.int64)  # the path from the root: each node's start, length, children done
    ns = np.empty(64, np.int64)
    done = np.zeros(64, np.int64)
    vals = np.empty(64, x.dtype)  # sums of finished subtrees not yet added to their sibling
    top, nv = 0, 0
    los[0], ns[0] = lo, n
    while top >= 0:
        cl, cn = los[top], ns[top]
        if cn <= 128:
            vals[nv] = _block_sum(x, cl, cn, zero)
            nv += 1
            top -= 1
            continue
        half = cn // 2
        half -= half % 8
        if done[top] == 2:  # left + right, in NumPy's order
            vals[nv - 2] = vals[nv - 2] + vals[nv - 1]
            nv -= 1
            top -= 1
            continue
        child = top + 1
        los[child], ns[child], done[child] = (cl, half, 0) if done[top] == 0 else (cl + half, cn - half, 0)
        done[top] += 1
        top = child
    return vals[0]


def _sum_f64(p):
    ib = numba.carray(p, (4,), dtype=np.int64)
    x = numba.carray(as_voidptr(ib[0]), (ib[1],), dtype=np.float64)
    o = numba.carray(as_voidptr(ib[2]), (1,), dtype=np.float64)
    s = pairwise(x, 0, ib[1], np.float64(0.0))
    o[0] = s / np.float64(ib[3]) if ib[3] else s
    return 0


def _sum_f32(p):
    ib = numba.carray(p, (4,), dtype=np.int64)
    x = numba.carray(as_voidptr(ib[0]), (ib[1],), dtype=np.float32)
    o = numba.carray(as_voidptr(ib[2]), (1,), dtype=np.float32)
    s = pairwise(x, 0, ib[1], np.float32(0.0))
    # a mean divides as NumPy's float32 / intp does: in float64, rounded to float32
    o[0] = np.float32(np.float64(s) / np.float64(ib[3])) if ib[3] else s
    return 0


_cfuncs: dict = {}
_lock = threading.Lock()


def sum_entry(dtype: np.dtype) -> int:
    """The address of the sum cfunc of ``dtype`` (float32 or float64), compiled or loaded once."""
    cf = _cfuncs.get(dtype.char)
    if cf is None:
        with _lock:
            cf = _cfuncs.get(dtype.char)
            if cf is None:
                fn = _sum_f64 if dtype == np.float64 else _sum_f32
                cf = numba.cfunc(_SIG, nogil=True, cache=True, error_model="numpy")(fn)
                _events[fn.__name__] = "cached" if cf.cache_hits else "compiled"
                _cfuncs[dtype.char] = cf
    return cf.address


def sum_block(a, out, mean: bool) -> bytes:
    """The block of a whole-array sum (or mean) of the contiguous ``a`` into ``out`` (one element)."""
    return _BLOCK.pack(a._addr, a.size, out._addr, a.size if mean else 0)
