"""Cholesky tile kernels: BLAS and LAPACK called from numba nopython code.

SciPy's ``scipy.linalg.blas``/``lapack`` Python wrappers hold the GIL (two
threads calling them run no faster than one).  Calling the same routines
through ``scipy.linalg.cython_blas``/``cython_lapack`` function pointers from
``nogil`` numba functions releases it, so engine workers factor tiles in
parallel.  Every kernel updates its output tile in place (no temporaries).

Tiles are C-ordered (row-major); BLAS sees each one as its transpose, so the
calls below swap sides, triangles and transposes accordingly.
"""

from __future__ import annotations

import ctypes

import numba
import numpy as np
from numba.extending import get_cython_function_address

__all__ = ["gemm_nt_sub", "potrf_lower", "syrk_lower_sub", "trsm_right_lower_t"]

_P = ctypes.c_void_p


def _fn(module: str, name: str, nargs: int):
    return ctypes.CFUNCTYPE(None, *([_P] * nargs))(get_cython_function_address(module, name))


_dgemm = _fn("scipy.linalg.cython_blas", "dgemm", 13)
_dsyrk = _fn("scipy.linalg.cython_blas", "dsyrk", 10)
_dtrsm = _fn("scipy.linalg.cython_blas", "dtrsm", 11)
_dpotrf = _fn("scipy.linalg.cython_lapack", "dpotrf", 5)

# cache=False: numba cannot cache functions that hold ctypes pointers; they
# compile on first use (about a second each).
_opts = {"nogil": True, "cache": False}


@numba.njit(**_opts)
def _i(v):
    return np.array([v], np.int32)


@numba.njit(**_opts)
def _c(ch):
    return np.array([ord(ch)], np.uint8)


@numba.njit(**_opts)
def _d(v):
    return np.array([v], np.float64)


@numba.njit(**_opts)
def potrf_lower(a):
    """Factor the SPD tile ``a`` in place: its lower triangle becomes L (a = L L^T).

    Returns LAPACK's info: 0, or k > 0 if the leading minor of order k is not
    positive definite.  The strict upper triangle is set to zero.
    """
    n = _i(a.shape[0])
    info = _i(0)
    _dpotrf(_c("U").ctypes, n.ctypes, a.ctypes, n.ctypes, info.ctypes)
    for i in range(a.shape[0]):  # a tile of the factor: zero above the diagonal
        for j in range(i + 1, a.shape[1]):
            a[i, j] = 0.0
    return info[0]


@numba.njit(**_opts)
def trsm_right_lower_t(lkk, b):
    """``b <- b @ inv(L)^T`` in place, with L the lower triangle of ``lkk``."""
    m = _i(b.shape[1])
    n = _i(b.shape[0])
    ldl = _i(lkk.shape[1])
    ldb = _i(b.shape[1])
    _dtrsm(_c("L").ctypes, _c("U").ctypes, _c("T").ctypes, _c("N").ctypes, m.ctypes, n.ctypes,
           _d(1.0).ctypes, lkk.ctypes, ldl.ctypes, b.ctypes, ldb.ctypes)


@numba.njit(**_opts)
def syrk_lower_sub(c, a):
    """``c <- c - a @ a^T`` on the lower triangle of ``c``, in place."""
    n = _i(c.shape[0])
    k = _i(a.shape[1])
    lda = _i(a.shape[1])
    ldc = _i(c.shape[1])
    _dsyrk(_c("U").ctypes, _c("T").ctypes, n.ctypes, k.ctypes, _d(-1.0).ctypes, a.ctypes, lda.ctypes,
           _d(1.0).ctypes, c.ctypes, ldc.ctypes)


@numba.njit(**_opts)
def gemm_nt_sub(c, a, b):
    """``c <- c - a @ b^T`` in place."""
    m = _i(c.shape[1])
    n = _i(c.shape[0])
    k = _i(a.shape[1])
    ldb = _i(b.shape[1])
    lda = _i(a.shape[1])
    ldc = _i(c.shape[1])
    _dgemm(_c("T").ctypes, _c("N").ctypes, m.ctypes, n.ctypes, k.ctypes, _d(-1.0).ctypes, b.ctypes,
           ldb.ctypes, a.ctypes, lda.ctypes, _d(1.0).ctypes, c.ctypes, ldc.ctypes)
