"""BLAS and LAPACK from numba nopython code: the Cholesky tile kernels and matmul.

SciPy's ``scipy.linalg.blas``/``lapack`` Python wrappers hold the GIL (two
threads calling them run no faster than one).  The same routines called
through ``scipy.linalg.cython_blas``/``cython_lapack`` function pointers from
``nogil`` numba functions release it, so engine workers run them in
parallel.  The routine's address is an argument of each kernel, bound when
it runs (``_kernels.call_address``), never compiled in: the kernels are
cached across processes like every other kernel (a function holding a
ctypes pointer cannot be cached and would compile in every process).

Arrays are C-ordered (row-major); BLAS sees each one as its transpose, so the
calls below swap sides, triangles and transposes accordingly.
"""

from __future__ import annotations

import struct
import threading

import numba
import numpy as np

from ._kernels import call_address, voidptr_address

__all__ = ["NJIT_KERNELS", "blas_layout", "gemm", "gemm_block", "gemm_entry", "gemm_nt_sub", "gemm_views",
           "potrf_lower", "routine", "syrk_lower_sub", "trsm_right_lower_t"]

_opts = {"nogil": True, "cache": True}
_routines: dict[str, int] = {}


def routine(name: str) -> int:
    """The address of a BLAS (``d*``/``s*``) or LAPACK routine of SciPy's Cython modules."""
    addr = _routines.get(name)
    if addr is None:
        from numba.extending import get_cython_function_address

        module = "scipy.linalg.cython_lapack" if name.endswith("potrf") else "scipy.linalg.cython_blas"
        addr = _routines[name] = get_cython_function_address(module, name)
    return addr


# Each kernel passes its scalar arguments through one int64 scratch array (chars and ints in the
# low bytes of a slot, doubles as float64 bits) that it reads again after the call, so that it
# outlives the call (NRT frees an array right after its last use).
# Tiles may be views of a larger array with contiguous rows: each leading dimension is the row
# stride in elements.
@numba.njit(**_opts)
def _potrf(a, fn):
    s = np.zeros(4, np.int64)
    s[0], s[1], s[2] = ord("U"), a.shape[0], a.strides[0] // a.itemsize
    p = s.ctypes.data
    call_address(fn, (p, p + 8, a.ctypes.data, p + 16, p + 24))
    for i in range(a.shape[0]):  # a tile of the factor: zero above the diagonal
        for j in range(i + 1, a.shape[1]):
            a[i, j] = 0.0
    return s.view(np.int32)[6]


@numba.njit(**_opts)
def _trsm(lkk, b, fn):
    s = np.zeros(9, np.int64)
    s[0], s[1], s[2], s[3] = ord("L"), ord("U"), ord("T"), ord("N")
    s[4], s[5], s[7], s[8] = b.shape[1], b.shape[0], lkk.strides[0] // 8, b.strides[0] // 8
    s.view(np.float64)[6] = 1.0
    p = s.ctypes.data
    call_address(fn, (p, p + 8, p + 16, p + 24, p + 32, p + 40, p + 48, lkk.ctypes.data, p + 56,
                      b.ctypes.data, p + 64))
    return s[0]


@numba.njit(**_opts)
def _syrk(c, a, fn):
    s = np.zeros(8, np.int64)
    s[0], s[1], s[2], s[3], s[5], s[7] = ord("U"), ord("T"), c.shape[0], a.shape[1], a.strides[0] // 8, \
        c.strides[0] // 8
    f = s.view(np.float64)
    f[4], f[6] = -1.0, 1.0
    p = s.ctypes.data
    call_address(fn, (p, p + 8, p + 16, p + 24, p + 32, a.ctypes.data, p + 40, p + 48, c.ctypes.data, p + 56))
    return s[0]


@numba.njit(inline="always")
def _gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, fn):
    """Column-major ``C = alpha op(A) op(B) + beta C`` (``ta``/``tb``: ord('N') or ord('T'))."""
    s = np.zeros(10, np.int64)
    s[0], s[1], s[2], s[3], s[4], s[6], s[7], s[9] = ta, tb, m, n, k, lda, ldb, ldc
    if c.itemsize == 8:
        f = s.view(np.float64)
        f[5], f[8] = alpha, beta
    else:
        f32 = s.view(np.float32)  # a float32 in the low half of its slot
        f32[10], f32[16] = alpha, beta
    p = s.ctypes.data
    call_address(fn, (p, p + 8, p + 16, p + 24, p + 32, p + 40, a.ctypes.data, p + 48, b.ctypes.data, p + 56,
                      p + 64, c.ctypes.data, p + 72))
    return s[0]


@numba.njit(**_opts)
def _gemm_nn(a, b, c, fn):
    """``c = a @ b``, row-major: column-major ``c^T = b^T a^T``."""
    m, k = a.shape
    n = b.shape[1]
    return _gemm(ord("N"), ord("N"), n, m, k, 1.0, b, n, a, k, 0.0, c, n, fn)


@numba.njit(**_opts)
def _gemm_nt_sub(c, a, b, fn):
    """``c -= a @ b^T``, row-major: column-major ``c^T -= b a^T``."""
    m, n, k = c.shape[1], c.shape[0], a.shape[1]
    return _gemm(ord("T"), ord("N"), m, n, k, -1.0, b, b.strides[0] // 8, a, a.strides[0] // 8, 1.0, c,
                 c.strides[0] // 8, fn)


@numba.njit(**_opts)
def _gemm_views(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, fn):
    """Column-major ``C = op(A) op(B)`` over views whose leading dimensions are given."""
    return _gemm(ta, tb, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc, fn)


NJIT_KERNELS = (_potrf, _trsm, _syrk, _gemm_nn, _gemm_nt_sub, _gemm_views)


# ----------------------------------------------------- gemm as a native op body
def _gemm_cfunc(p):
    """Run the gemm that the block at ``p`` describes (see ``gemm_block``); a cfunc ``int32(void*)``.

    Every BLAS argument passed by reference points into the block itself."""
    ib = numba.carray(p, (14,), dtype=np.int64)
    q = voidptr_address(p)
    call_address(ib[0], (q + 8, q + 16, q + 24, q + 32, q + 40, q + 96, ib[9], q + 48, ib[10], q + 56,
                         q + 104, ib[11], q + 64))
    return 0


_F64_BLOCK = struct.Struct("<12qdd")       # routine, ta, tb, m, n, k, lda, ldb, ldc, a, b, c, alpha, beta
_F32_BLOCK = struct.Struct("<12qf4xf4x")   # a float32 in the low half of its slot
_entry: list = []
_entry_lock = threading.Lock()


def gemm_entry() -> int:
    """The address of the gemm cfunc (compiled once, cached across processes like every kernel)."""
    if not _entry:
        with _entry_lock:
            if not _entry:
                from . import _kernels

                cf = numba.cfunc(_kernels._SIG, nogil=True, cache=True)(_gemm_cfunc)
                _kernels._events["_gemm_cfunc"] = "cached" if cf.cache_hits else "compiled"
                _entry.append(cf)
    return _entry[0].address


def gemm_block(a, b, out, la, lb) -> bytes:
    """The argument block of ``out = a @ b`` (2-d ops/ arrays of one float dtype, ``la``/``lb`` their
    ``blas_layout``s, ``out`` with contiguous rows): column-major ``out^T = op(b^T) op(a^T)``.

    The op that runs it must keep the three arrays alive (its record does)."""
    m, k = a.shape
    n = b.shape[1]
    f64 = out.dtype == np.float64
    packer = _F64_BLOCK if f64 else _F32_BLOCK
    return packer.pack(routine("dgemm" if f64 else "sgemm"), lb[0], la[0], n, m, k, lb[1], la[1],
                       out._strides[0], b._addr, a._addr, out._addr, 1.0, 0.0)


def potrf_lower(a) -> int:
    """Factor the SPD tile ``a`` in place: its lower triangle becomes L (a = L L^T).

    Returns LAPACK's info: 0, or k > 0 if the leading minor of order k is not
    positive definite.  The strict upper triangle is set to zero.
    """
    return int(_potrf(a, routine("dpotrf")))


def trsm_right_lower_t(lkk, b) -> None:
    """``b <- b @ inv(L)^T`` in place, with L the lower triangle of ``lkk``."""
    _trsm(lkk, b, routine("dtrsm"))


def syrk_lower_sub(c, a) -> None:
    """``c <- c - a @ a^T`` on the lower triangle of ``c``, in place."""
    _syrk(c, a, routine("dsyrk"))


def gemm_nt_sub(c, a, b) -> None:
    """``c <- c - a @ b^T`` in place."""
    _gemm_nt_sub(c, a, b, routine("dgemm"))


def gemm(a, b, c) -> None:
    """``c = a @ b`` for C-contiguous 2-d float32 or float64 arrays of one dtype."""
    _gemm_nn(a, b, c, routine("dgemm" if c.dtype == np.float64 else "sgemm"))


def blas_layout(x) -> tuple[int, int] | None:
    """``(ord('N') or ord('T'), leading dimension)`` of a 2-d view as column-major BLAS sees it: its
    transpose when its rows are contiguous (``N``), itself when its columns are (a transposed array,
    ``T``); None when neither is."""
    rows, cols = x.shape
    s0, s1 = (s // x.itemsize for s in x.strides)
    if (s1 == 1 or cols == 1) and s0 >= max(cols, 1):
        return ord("N"), s0
    if (s0 == 1 or rows == 1) and s1 >= max(rows, 1):
        return ord("T"), s1
    return None


def gemm_views(a, b, c, la, lb) -> None:
    """``c = a @ b`` where ``a`` and ``b`` have the layouts ``la``, ``lb`` of ``blas_layout`` and ``c``
    has contiguous rows: column-major ``c^T = op(b^T) op(a^T)``."""
    m, k = a.shape
    n = b.shape[1]
    fn = routine("dgemm" if c.dtype == np.float64 else "sgemm")
    _gemm_views(lb[0], la[0], n, m, k, b, lb[1], a, la[1], c, c.strides[0] // c.itemsize, fn)
