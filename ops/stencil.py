"""The 2-d heat equation over tiles: a stencil workload for the engine.

The grid is cut into tiles, each an array with its own var, double-buffered
by step parity.  Step t of a tile reads the tile and its four neighbours of
step t-1 and writes the tile of step t; the engine infers that tiles of one
step run in parallel and that a tile may be overwritten only after its
neighbours of the next step have read it.  Boundary cells of the grid keep
their values (Dirichlet); interior cells take
``u + alpha * (up + down + left + right - 4u)``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

import depengine as de

from ._core import push
from .array import NDArray
from .creation import zeros

__all__ = ["heat2d", "heat2d_reference"]

_EMPTY = np.zeros((0, 0))


@numba.njit(nogil=True, cache=True)
def _tile_step(c, up, down, left, right, out, alpha, gi0, gj0, n, m):
    h, w = c.shape
    for i in range(h):
        for j in range(w):
            gi, gj = gi0 + i, gj0 + j
            if gi == 0 or gj == 0 or gi == n - 1 or gj == m - 1:
                out[i, j] = c[i, j]
                continue
            u = c[i - 1, j] if i > 0 else up[up.shape[0] - 1, j]
            d = c[i + 1, j] if i < h - 1 else down[0, j]
            lf = c[i, j - 1] if j > 0 else left[i, left.shape[1] - 1]
            rt = c[i, j + 1] if j < w - 1 else right[i, 0]
            out[i, j] = c[i, j] + alpha * (u + d + lf + rt - 4.0 * c[i, j])


def heat2d(u0: NDArray, steps: int, tile: int = 256, alpha: float = 0.2) -> NDArray:
    """``steps`` explicit steps of the heat equation on ``u0`` (a 2-d float64 CPU array)."""
    if not isinstance(u0, NDArray) or u0.ndim != 2 or u0.dtype != np.float64 or u0.device != de.cpu():
        raise TypeError("heat2d: u0 must be a 2-d float64 NDArray on de.cpu()")
    if steps.__class__ is not int or steps < 0:
        raise ValueError(f"heat2d: steps={steps!r} must be an int >= 0")
    if tile.__class__ is not int or tile < 1:
        raise ValueError(f"heat2d: tile={tile!r} must be an int >= 1")
    if not 0 < alpha <= 0.25:
        raise ValueError(f"heat2d: alpha={alpha!r} must be in (0, 0.25] for a stable explicit scheme")
    n, m = u0.shape
    ti, tj = math.ceil(n / tile), math.ceil(m / tile)
    rows = [(k * tile, min(n, (k + 1) * tile)) for k in range(ti)]
    cols = [(k * tile, min(m, (k + 1) * tile)) for k in range(tj)]
    bufs = [{(a, b): u0[r0:r1, c0:c1].copy() for a, (r0, r1) in enumerate(rows)
             for b, (c0, c1) in enumerate(cols)}]
    bufs.append({key: t.copy() for key, t in bufs[0].items()})
    for step in range(steps):
        src, dst = bufs[step % 2], bufs[(step + 1) % 2]
        for (a, b), c in src.items():
            nbrs = [src.get((a - 1, b)), src.get((a + 1, b)), src.get((a, b - 1)), src.get((a, b + 1))]
            out = dst[a, b]
            gi0, gj0 = rows[a][0], cols[b][0]

            def fn(ctx, c=c, nbrs=nbrs, out=out, gi0=gi0, gj0=gj0):
                up, down, left, right = (x._data if x is not None else _EMPTY for x in nbrs)
                _tile_step(c._data, up, down, left, right, out._data, alpha, gi0, gj0, n, m)
            push(fn, [c, *[x for x in nbrs if x is not None]], [out], "heat-tile", c.device)
    result = zeros((n, m))
    for (a, b), t in bufs[steps % 2].items():
        result[rows[a][0]:rows[a][1], cols[b][0]:cols[b][1]] = t
    return result


def heat2d_reference(u0: np.ndarray, steps: int, alpha: float = 0.2) -> np.ndarray:
    """The same computation on the whole grid with NumPy, for checking."""
    u = np.array(u0, dtype=np.float64, copy=True)
    for _ in range(steps):
        nxt = u.copy()
        nxt[1:-1, 1:-1] = u[1:-1, 1:-1] + alpha * (u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2]
                                                    + u[1:-1, 2:] - 4 * u[1:-1, 1:-1])
        u = nxt
    return u
