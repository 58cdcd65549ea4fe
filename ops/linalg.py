"""A tiled Cholesky factorisation pushed as a task graph of tile ops.

The matrix is cut into tiles, each an array with its own var.  For each
column k of tiles: POTRF factors the diagonal tile, TRSM solves the tiles
below it, then SYRK and GEMM update the trailing tiles in place.  Nobody
draws an edge: every op names the tiles it reads and writes, and the engine
runs each one as soon as it may.  The critical path (POTRF, then TRSM, then
the updates of the next column) gets higher priorities than the bulk of the
GEMM updates, so workers never idle waiting for the panel.

On the CPU the tile kernels are BLAS/LAPACK called from numba with the GIL
released (``ops._blas``); on a GPU they are CUDA kernels of our own.

On an mpi engine the tiles are spread 2-D block-cyclic over a P x Q grid of
ranks (tile (i, j) belongs to rank (i mod P) * Q + j mod Q, after ScaLAPACK
and Chameleon): each rank runs the kernels that write its tiles, and the
engine moves the tiles they read.  The input's owner cuts it into tiles and
sends each to its rank; the factor is assembled on that same rank.
"""

from __future__ import annotations

import math
import os

import numpy as np

from . import _blas, _gpu
from ._core import push, runtime
from .array import NDArray
from .creation import empty, zeros

__all__ = ["blas_threads", "cholesky", "use_blas"]

PRIORITY = {"potrf": 30, "trsm": 20, "next": 10, "update": 0}

_blas_limiter = None
_numpy_threads = None  # numpy_blas_threads(), once looked up


def blas_threads(n: int | None) -> None:
    """Threads per call of the BLAS ops/ calls (SciPy's OpenBLAS; NumPy's own is left alone).

    1 is the default once ops/ runs BLAS: the engine's workers make the calls
    in parallel, one thread each.  ``None`` restores what the process had.
    """
    global _blas_limiter, _numpy_threads
    from threadpoolctl import ThreadpoolController

    _numpy_threads = None  # (limits change: look again)

    if _blas_limiter is not None:
        _blas_limiter.restore_original_limits()
        _blas_limiter = None
    if n is not None:
        if n.__class__ is not int or n < 1:
            raise ValueError(f"blas_threads({n!r}): expected an int >= 1 or None")
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library ops/ calls)

        blas = ThreadpoolController().select(user_api="blas")
        ours = [lib.filepath for lib in blas.lib_controllers if f"{os.sep}scipy" in lib.filepath]
        _blas_limiter = (blas.select(filepath=ours) if ours else blas).limit(limits=n)


def numpy_blas_threads() -> int:
    """Threads per call of NumPy's own BLAS (after ``use_blas``; 1 when not found), looked up once."""
    global _numpy_threads
    if _numpy_threads is None:
        from threadpoolctl import ThreadpoolController

        libs = ThreadpoolController().select(user_api="blas").lib_controllers
        _numpy_threads = max((lib.num_threads for lib in libs if f"{os.sep}numpy" in lib.filepath), default=1)
    return _numpy_threads


def use_blas() -> None:
    """Called before ops/ pushes BLAS work: one BLAS thread per call unless the user chose."""
    if _blas_limiter is None:
        blas_threads(1)


def cholesky(a: NDArray, tile: int = 512, grid: tuple[int, int] | None = None) -> NDArray:
    """The lower Cholesky factor L of the SPD array ``a`` (a = L L^T), as a task graph.

    ``tile`` need not divide n.  A matrix that is not positive definite makes
    the factor fail: reading it raises ``numpy.linalg.LinAlgError`` (CPU).
    On an mpi engine the tiles are distributed over a ``grid`` of P x Q ranks
    (default: the most square one with P >= Q); the factor belongs to ``a``'s owner.
    """
    if not isinstance(a, NDArray):
        raise TypeError(f"cholesky: expected an NDArray, got {type(a).__name__}")
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"cholesky: expected a square 2-d array, got shape {a.shape}")
    if a.dtype != np.float64:
        raise TypeError(f"cholesky: dtype {a.dtype.name} is not supported (float64 is)")
    if tile.__class__ is not int or tile < 1:
        raise ValueError(f"cholesky: tile={tile!r} must be an int >= 1")
    ranks = a._engine.size if a._engine.type == "mpi" else 1
    rows, cols = _grid(grid, ranks)
    n = a.shape[0]
    nt = max(1, math.ceil(n / tile))
    bounds = [(k * tile, min(n, (k + 1) * tile)) for k in range(nt)]
    gpu = a.device.type == "gpu"
    if not gpu:
        use_blas()
    # lower-triangle tiles, each an array with its own var
    in_place = ranks == 1 and not gpu
    if in_place:  # views of the factor's own storage: factored in place, no copies
        out = empty((n, n))
        tiles = {(i, j): _tile_in(out, a, bounds[i], bounds[j], j) for i in range(nt) for j in range(i + 1)}
    elif ranks == 1:
        tiles = {(i, j): a[bounds[i][0]:bounds[i][1], bounds[j][0]:bounds[j][1]].copy()
                 for i in range(nt) for j in range(i + 1)}
    else:  # cut on a's owner, each tile sent to its rank
        tiles = {(i, j): _tile_of(a, bounds[i], bounds[j], (i % rows) * cols + j % cols, j)
                 for i in range(nt) for j in range(i + 1)}
    kern = _GpuTiles(a) if gpu else _CpuTiles()
    for k in range(nt):
        kern.potrf(tiles[k, k])
        for i in range(k + 1, nt):
            kern.trsm(tiles[k, k], tiles[i, k])
        for j in range(k + 1, nt):
            prio = PRIORITY["next"] if j == k + 1 else PRIORITY["update"]
            kern.syrk(tiles[j, j], tiles[j, k], prio)
            for i in range(j + 1, nt):
                kern.gemm(tiles[i, j], tiles[i, k], tiles[j, k], prio)
    if gpu:
        out = zeros((n, n), device=a.device)
    elif not in_place:
        out = empty((n, n), owner=a.owner)
    if not gpu:  # the tiles fill the lower triangle; the rest is zeroed when the worker has nothing urgent
        def upper(ctx):
            for r0, r1 in bounds:
                out._data[r0:r1, r1:] = 0.0
        push(upper, [], [out], "zeros", a.device, priority=PRIORITY["update"] - 1)
    if in_place:  # the factor is ready when every tile is
        push(_nothing, list(tiles.values()), [out], "factor", a.device)
        return out
    for (i, j), t in tiles.items():
        out[bounds[i][0]:bounds[i][1], bounds[j][0]:bounds[j][1]] = t
    return out


def _nothing(ctx) -> None:
    pass


def _cut_priority(column: int) -> int:
    return max(PRIORITY["update"], PRIORITY["potrf"] - 10 * column)


def _tile_in(out: NDArray, a: NDArray, rows: tuple[int, int], cols: tuple[int, int], column: int) -> NDArray:
    """Tile (rows, cols) of the factor: a view of ``out``'s storage with a var of its own (the
    tiles of one array run in parallel; the factor's var waits for all of them), holding ``a``'s
    tile once it is cut (about when its column's panel needs it)."""
    t = NDArray._wrap_host(out._engine, out._data[rows[0]:rows[1], cols[0]:cols[1]], "tile", out.device)
    src = a[rows[0]:rows[1], cols[0]:cols[1]]
    prio = _cut_priority(column)
    push(lambda ctx: np.copyto(t._data, src._data), [a], [t], "tile", a.device, priority=prio)
    return t


def _grid(grid, ranks: int) -> tuple[int, int]:
    if grid is None:  # the most square grid, more rows than columns: a panel's TRSMs spread over the rows
        cols = max(q for q in range(1, math.isqrt(ranks) + 1) if ranks % q == 0)
        return ranks // cols, cols
    if (not isinstance(grid, tuple) or len(grid) != 2 or any(g.__class__ is not int or g < 1 for g in grid)
            or grid[0] * grid[1] != ranks):
        raise ValueError(f"cholesky: grid={grid!r} must be a tuple (P, Q) of ints with P * Q == {ranks}, "
                         "the number of ranks")
    return grid


def _tile_of(a: NDArray, rows: tuple[int, int], cols: tuple[int, int], owner: int, column: int) -> NDArray:
    view = a[rows[0]:rows[1], cols[0]:cols[1]]
    t = empty(view.shape, owner=owner)
    # a tile is cut (on a's owner) and sent about when its column's panel needs it
    prio = _cut_priority(column)
    push(lambda ctx: np.copyto(t._data, view._data), [a], [t], "tile", a.device, priority=prio,
         execute_on=a.owner)
    return t


class _CpuTiles:
    def potrf(self, t):
        def fn(ctx):
            info = _blas.potrf_lower(t._data)
            if info:
                raise np.linalg.LinAlgError(f"cholesky: the matrix is not positive definite (a leading "
                                            f"minor of the tile factored by op #{ctx.op_id} is not)")
        push(fn, [], [t], "potrf", t.device, priority=PRIORITY["potrf"])

    def trsm(self, lkk, b):
        push(lambda ctx: _blas.trsm_right_lower_t(lkk._data, b._data), [lkk], [b], "trsm", b.device,
             priority=PRIORITY["trsm"])

    def syrk(self, c, a, prio):
        push(lambda ctx: _blas.syrk_lower_sub(c._data, a._data), [a], [c], "syrk", c.device, priority=prio)

    def gemm(self, c, a, b, prio):
        push(lambda ctx: _blas.gemm_nt_sub(c._data, a._data, b._data), [a, b], [c], "gemm", c.device,
             priority=prio)


class _GpuTiles:
    def __init__(self, a: NDArray) -> None:
        self.eng = a._engine
        self.dev = a.device.index

    def _launch(self, name, grid, block, args_of, reads, writes, prio):
        dev = self.dev
        device = writes[0].device

        def fn(ctx):
            rt = runtime(self.eng, device)
            rt.launch(_gpu.kernel(rt, dev, name), grid, block, args_of(rt, ctx.stream), ctx.stream)
        push(fn, reads, writes, name.split("_")[1], writes[0].device, priority=prio)

    @staticmethod
    def _arg(rt, x, stream):
        return rt.kernel_arg(x._store.ensure(rt, stream), np.float64, (x.size,))

    def potrf(self, t):
        n = t.shape[0]
        self._launch("chol_potrf_f64", (1,), (256,),
                     lambda rt, s: [self._arg(rt, t, s), np.int64(n), np.int64(n)],
                     [], [t], PRIORITY["potrf"])

    def trsm(self, lkk, b):
        m, n = b.shape
        self._launch("chol_trsm_f64", ((m + 127) // 128,), (128,),
                     lambda rt, s: [self._arg(rt, lkk, s), self._arg(rt, b, s), np.int64(m), np.int64(n)],
                     [lkk], [b], PRIORITY["trsm"])

    def syrk(self, c, a, prio):
        n, k = a.shape
        self._launch("chol_syrk_f64", ((n * n + 255) // 256,), (256,),
                     lambda rt, s: [self._arg(rt, c, s), self._arg(rt, a, s), np.int64(n), np.int64(k)],
                     [a], [c], prio)

    def gemm(self, c, a, b, prio):
        m, k = a.shape
        n = b.shape[0]
        self._launch("chol_gemm_f64", ((m * n + 255) // 256,), (256,),
                     lambda rt, s: [self._arg(rt, c, s), self._arg(rt, a, s), self._arg(rt, b, s),
                                    np.int64(m), np.int64(n), np.int64(k)],
                     [a, b], [c], prio)
