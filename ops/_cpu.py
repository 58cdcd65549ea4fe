"""The CPU backend: op bodies for what the front end (``math.py``) decided.

Elementwise ops run one cfunc entry point (``_kernels.elementwise``) on an
argument block packed when the op is pushed: the body is a single call that
releases the GIL.  The layout is found once per call from the operands'
shapes and strides: the output is seen as ``rows x inner`` after merging
dimensions that all operands lay out alike (a contiguous operand of the
output's shape is one row), and each operand is a contiguous row (``C``), a
value repeated along the row (``B``, broadcasting), a strided row (``S``) or
a scalar (``K``).  What cannot be seen that way (more than two merged
dimensions, negative strides, operands of another dtype than the work
dtype) runs NumPy's ufunc on the arrays' views instead, which also releases
the GIL.  Large ops are cut into parts that idle workers share
(``_parallel.run_parts``); the op is still one op.

Reductions are NumPy's (pairwise sums, SIMD); random numbers and the BLAS
kernels are njit functions compiled with ``cache=True``.
"""

from __future__ import annotations

from functools import partial as _partial

import numba
import numpy as np

from depengine._native import _C as _native_core

from . import _blas, _kernels, _sum
from ._core import Elementwise
from ._kernels import call
from ._parallel import run_parts, workers_for
from .array import NDArray as _NDArray

__all__ = ["BINARY", "COMPARE", "NJIT_KERNELS", "REDUCE", "UNARY", "elementwise", "fill_random", "flat",
           "gemm_body", "geometry", "matmul_body", "reduce_axis", "reduce_body", "softmax_ce",
           "softmax_ce_grad", "sum_body"]

BINARY = ("add", "subtract", "multiply", "divide", "power", "maximum", "minimum")
COMPARE = ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")
UNARY = ("exp", "log", "sqrt", "tanh", "abs", "negative", "sin", "cos", "square", "sign", "copy")
REDUCE = ("sum", "max", "min", "argmax", "mean")

NATIVE_BODIES = True  # one-part kernels as de.native bodies on the compiled core (bench.arrays compares)
# A native op writing at most this many bytes (a gemm of at most INLINE_FLOPS multiply-adds) is cheap:
# a push that finds it ready runs it on the pushing thread, where handing it to a worker would cost
# more than the call (make_native's inline flag; 10 000 float64 additions take about 2 us here)
INLINE_BYTES = 1 << 17
INLINE_FLOPS = 1 << 18
PART_MIN = 1 << 16  # elements per part, at least: below that a part costs more than it saves
_SPLIT_MIN = 4 * PART_MIN
_opts = {"nogil": True, "cache": True, "error_model": "numpy"}


# ------------------------------------------------------------------ layout
def layout(out, operands):
    """``(rows, inner, values, sig, out_cls)`` of an elementwise op, or None (NumPy's turn).

    ``values`` holds ``address or scalar, row stride, column stride`` for the
    output then each operand, strides in elements; ``sig`` holds per operand
    its class and dtype character (``"Cd"``: a contiguous row of float64).
    """
    shape = out.shape
    if out._flat:
        values = [out._addr, 0, 1]
        sig = []
        for x in operands:
            if x.__class__ is _NDArray:
                if not x._flat or x.shape != shape:
                    break
                values += (x._addr, 0, 1)
                sig.append("C" + x.dtype.char)
            else:
                values += (x, 0, 0)
                sig.append("K")
        else:  # every operand is contiguous and of the output's shape: one row
            return 1, out.size, values, tuple(sig), "C"
    arrays = [x for x in operands if x.__class__ is _NDArray]
    found = geometry(shape, [out, *arrays])
    if found is None:
        return None
    rows, inner, geo = found
    geo = iter(geo)
    slot = next(geo)
    values, out_cls, sig = list(slot), slot_class(slot), []
    for x in operands:
        if x.__class__ is _NDArray:
            slot = next(geo)
            values += slot
            sig.append(slot_class(slot) + x.dtype.char)
        else:
            values += (x, 0, 0)
            sig.append("K")
    return rows, inner, values, tuple(sig), out_cls


def slot_class(slot) -> str:
    return "C" if slot[2] == 1 else "B" if slot[2] == 0 else "S"


def geometry(shape, arrays):
    """``(rows, inner, [(address, row stride, column stride)])`` of ``arrays`` broadcast to ``shape``.

    None when the merged dimensions are more than two or a stride is negative.
    """
    nd = len(shape)
    strides = []
    for x in arrays:
        own = tuple(0 if n == 1 else s for n, s in zip(x.shape, x._strides, strict=True))
        strides.append((0,) * (nd - x.ndim) + own)
    if any(s < 0 for st in strides for s in st):
        return None
    merged: list[list] = []  # [size, strides per array], outermost first
    for d in range(nd):
        if shape[d] == 1:
            continue
        if merged and all(m == st[d] * shape[d] for m, st in zip(merged[-1][1], strides, strict=True)):
            merged[-1] = [merged[-1][0] * shape[d], [st[d] for st in strides]]
        else:
            merged.append([shape[d], [st[d] for st in strides]])
    if len(merged) > 2:
        return None
    while len(merged) < 2:
        merged.insert(0, [1, [0] * len(strides)])
    (rows, rs), (inner, cs) = merged
    return rows, inner, [(x._addr, rs[k], cs[k]) for k, x in enumerate(arrays)]


# -------------------------------------------------------------- op bodies
def elementwise(eng, op: str, work, out, operands):
    """``(body, record)`` of one elementwise op writing ``out`` (operands: arrays and scalars).

    The body is one kernel call (``partial(call, entry, block)``), or a
    function running parts on idle workers, or NumPy's ufunc.
    """
    rec = Elementwise(op, operands, out, work)
    found = layout(out, operands)
    if found is None:
        return _numpy_body(op, work, out, operands), rec
    rows, inner, values, sig, out_cls = found
    entry, packer = _kernels.elementwise(op, work, out.dtype, out_cls, sig)
    nparts = parts_for(eng, rows * inner)
    if nparts == 1:
        block = packer.pack(0, rows, inner, *values)
        if NATIVE_BODIES and eng.options.core == "compiled":  # a worker of the core runs it without the GIL
            return _native_core.make_native(entry, None, f"native@{entry:#x}", block,
                                            out.nbytes <= INLINE_BYTES), rec
        return _partial(call, entry, block), rec
    classes = ("C", *[s[0] for s in sig])
    dtypes = (out.dtype, *[np.dtype(s[1]) if len(s) > 1 else work for s in sig])
    return parts_body(eng, op, entry, split_blocks(packer, rows, inner, values, classes, dtypes, nparts)), rec


def sum_body(eng, op: str, a, out):
    """The body of ``op`` (sum or mean) over every element of the contiguous float array ``a``."""
    entry, block = _sum.sum_entry(a.dtype), _sum.sum_block(a, out, op == "mean")
    if NATIVE_BODIES and _native_core is not None and eng.options.core == "compiled":
        return _native_core.make_native(entry, None, op, block, a._data.nbytes <= INLINE_BYTES)
    return _partial(call, entry, block)


def gemm_body(eng, a, b, out, la, lb):
    """The body of ``out = a @ b``: one gemm call (``la``, ``lb``: the operands' ``blas_layout``)."""
    block = _blas.gemm_block(a, b, out, la, lb)
    if NATIVE_BODIES and _native_core is not None and eng.options.core == "compiled":
        cheap = a.shape[0] * a.shape[1] * b.shape[1] <= INLINE_FLOPS
        return _native_core.make_native(_blas.gemm_entry(), None, "gemm", block, cheap)
    return _partial(call, _blas.gemm_entry(), block)


def parts_for(eng, elements: int) -> int:
    if elements < _SPLIT_MIN:
        return 1
    workers = workers_for(eng)
    return 1 if workers == 1 else min(4 * workers, elements // PART_MIN)


def split_blocks(packer, rows, inner, values, classes, dtypes, nparts):
    """One block per part: rows split in ranges, or a single row split along its length.

    ``values`` as ``layout`` gives them; ``classes`` and ``dtypes`` include the output's.
    """
    blocks = []
    if rows > 1:
        nparts = min(nparts, rows)
        for k in range(nparts):
            blocks.append(packer.pack(rows * k // nparts, rows * (k + 1) // nparts, inner, *values))
        return blocks
    for k in range(nparts):
        c0, c1 = inner * k // nparts, inner * (k + 1) // nparts
        vals = list(values)
        for i, (cls, dt) in enumerate(zip(classes, dtypes, strict=True)):
            if cls != "K":
                vals[3 * i] += c0 * vals[3 * i + 2] * dt.itemsize
        blocks.append(packer.pack(0, 1, c1 - c0, *vals))
    return blocks


def parts_body(eng, name, entry, blocks):
    def run(i):
        call(entry, blocks[i])

    def fn(ctx):
        run_parts(eng, name, len(blocks), run)
    return fn


_UFUNC = {"divide": np.true_divide, "abs": np.absolute}


def _numpy_body(op, work, out, operands):
    """NumPy's ufunc over the views: any dimensions, strides and dtypes (casting to ``work``)."""
    ins = tuple(x._data if x.__class__ is _NDArray else work.type(x) for x in operands)
    o = out._data
    if op == "copy":
        return lambda ctx: np.copyto(o, ins[0], casting="unsafe")
    ufunc = _UFUNC.get(op) or getattr(np, op)
    sig = (work,) * len(ins) + ((np.dtype(np.bool_),) if op in COMPARE else (work,))
    return lambda ctx: ufunc(*ins, out=o, signature=sig, casting="unsafe")


_REDUCERS = {"sum": np.add.reduce, "max": np.maximum.reduce, "min": np.minimum.reduce}


def reduce_body(op: str, a, out, axis, keepdims: bool, eng=None):
    """NumPy's reduction into ``out`` (pairwise sums, SIMD; it releases the GIL on large arrays).

    The ufuncs' own reductions, without the Python layers of ``np.sum`` and
    ``np.mean`` (which cost more than the work on small arrays); ``mean``
    divides as ``np.mean`` does.
    """
    if (eng is not None and axis is None and op in ("sum", "mean") and a._flat and a.size
            and a.dtype.char in "fd" and out.dtype == a.dtype):  # one cfunc call: a native body
        return sum_body(eng, op, a, out)
    x, o = a._data, out._data
    if op == "argmax":
        return lambda ctx: np.argmax(x, axis=axis, out=o)
    if op == "mean":
        count = a.size // max(out.size, 1) if axis is not None else a.size
        if not count:
            return lambda ctx: np.mean(x, axis=axis, out=o, keepdims=keepdims, dtype=o.dtype)
        count = np.intp(count)

        def mean(ctx):
            np.add.reduce(x, axis=axis, dtype=o.dtype, out=o, keepdims=keepdims)
            np.true_divide(o, count, out=o, casting="unsafe")
        return mean
    reducer = _REDUCERS[op]
    if op == "sum":
        return lambda ctx: reducer(x, axis=axis, out=o, keepdims=keepdims, dtype=o.dtype)
    return lambda ctx: reducer(x, axis=axis, out=o, keepdims=keepdims)


MATMUL_SPLIT = 1 << 24  # m*n*k from which a product uses every core (NumPy's threaded BLAS, or row blocks)


def matmul_body(eng, a, b, out):
    """BLAS for 2-d float operands of the result's dtype whose rows or columns are contiguous (so
    transposed views too), else NumPy's matmul; both release the GIL.

    A large product (more than ``MATMUL_SPLIT`` multiply-adds, more than one worker) is one call of
    NumPy's BLAS when that runs several threads: they share each packed panel of the operands.  Cut
    into row blocks that idle workers share, each block's call packs all of ``b`` again: a 2048
    product took 7% more than NumPy's (164 against 155 ms, medians of 8 alternated runs).  Row blocks
    remain for a NumPy whose BLAS runs one thread (``OPENBLAS_NUM_THREADS=1``, or one library shared
    with SciPy, which ``linalg.use_blas`` limits).
    """
    A, B, C = a._data, b._data, out._data
    la = lb = None
    if (a.ndim == b.ndim == 2 and a.dtype == b.dtype == out.dtype and out.dtype.kind == "f" and out.size
            and a.shape[1] and out._strides[1] == 1):
        la, lb = _blas.blas_layout(A), _blas.blas_layout(B)
    if la is None or lb is None:
        return lambda ctx: np.matmul(A, B, out=C, dtype=out.dtype)
    m, k = A.shape
    nparts = 1
    if m * B.shape[1] * k > MATMUL_SPLIT and workers_for(eng) > 1:
        from .linalg import numpy_blas_threads

        if numpy_blas_threads() > 1:
            return lambda ctx: np.matmul(A, B, out=C)
        nparts = max(1, min(4 * workers_for(eng), m // 64))
    if nparts == 1:  # one gemm call on a block packed now: a native body on the compiled core
        return gemm_body(eng, a, b, out, la, lb)
    bounds = [(m * i // nparts, m * (i + 1) // nparts) for i in range(nparts)]
    flat = a._flat and b._flat and out._flat

    def run(i):
        r0, r1 = bounds[i]
        if flat:
            _blas.gemm(A[r0:r1], B, C[r0:r1])
        else:
            _blas.gemm_views(A[r0:r1], B, C[r0:r1], _blas.blas_layout(A[r0:r1]), lb)
    return lambda ctx: run_parts(eng, "matmul", nparts, run)


def flat(op: str, out: np.ndarray, *inputs: np.ndarray) -> None:
    """``op`` over contiguous 1-d NumPy arrays of one dtype (the simulated GPU's kernels use it)."""
    work = inputs[0].dtype
    entry, packer = _kernels.elementwise(op, work, out.dtype, "C", ("C" + work.char,) * len(inputs))
    vals = [0, 1, out.size, _kernels.address(out), 0, 1]
    for x in inputs:
        vals += (_kernels.address(x), 0, 1)
    call(entry, packer.pack(*vals))


# ------------------------------------------------------------- njit kernels
@numba.njit(**_opts)
def reduce_axis(code, x, out):
    """Reduce ``x`` of shape (outer, n, inner) over its middle axis into ``out`` (outer, inner)."""
    outer, n, inner = x.shape
    for o in range(outer):
        for i in range(inner):
            if code == 0 or code == 4:
                acc = x[o, 0, i] - x[o, 0, i]
                for k in range(n):
                    acc += x[o, k, i]
                out[o, i] = acc / n if code == 4 else acc
            elif code == 3:
                best = 0
                for k in range(1, n):
                    if x[o, k, i] > x[o, best, i]:
                        best = k
                out[o, i] = best
            else:
                acc = x[o, 0, i]
                for k in range(1, n):
                    v = x[o, k, i]
                    if (code == 1 and v > acc) or (code == 2 and v < acc):
                        acc = v
                out[o, i] = acc


@numba.njit(**_opts)
def _splitmix(x):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@numba.njit(**_opts)
def fill_random(out, seed, counter, normal, a, b):
    """Counter-based random numbers: element k comes from hash(seed, counter + k).

    Uniform in [a, b), or normal with mean a and scale b (Box-Muller).  The
    same function runs on the simulated GPU and matches the CUDA kernel.
    """
    flat = out.reshape(-1)
    s = _splitmix(np.uint64(seed))
    for k in range(flat.shape[0]):
        h1 = _splitmix(s ^ np.uint64(counter + 2 * k))
        u1 = (h1 >> np.uint64(11)) * (1.0 / 9007199254740992.0)
        if normal:
            h2 = _splitmix(s ^ np.uint64(counter + 2 * k + 1))
            u2 = (h2 >> np.uint64(11)) * (1.0 / 9007199254740992.0)
            r = np.sqrt(-2.0 * np.log(1.0 - u1))
            flat[k] = a + b * r * np.cos(6.283185307179586 * u2)
        else:
            flat[k] = a + (b - a) * u1


@numba.njit(**_opts)
def _label(labels, i, c, strict):
    """Row i's class index, or -1 for a label that is not an integer in [0, c) (``strict``: raise)."""
    k = np.int64(labels[i])
    if k != labels[i] or k < 0 or k >= c:
        if strict:
            raise ValueError("softmax_cross_entropy: a label is not a class index in [0, classes)")
        return -1
    return k


@numba.njit(**_opts)
def _row_exp_sum(x, i, c):
    """``(top, total)`` of row i: its largest value and ``sum(exp(x[i] - top))``, in float64."""
    top = np.float64(x[i, 0])
    for j in range(1, c):
        top = max(top, np.float64(x[i, j]))
    total = 0.0
    for j in range(c):
        total += np.exp(np.float64(x[i, j]) - top)
    return top, total


@numba.njit(**_opts)
def softmax_ce(x, labels, out, strict):
    """Per row i of ``x`` (n, c): ``log(sum(exp(x[i]))) - x[i, labels[i]]``, in float64, into ``out``.

    A label that is not an integer in [0, c) raises (``strict``) or gives NaN.
    """
    n, c = x.shape
    for i in range(n):
        k = _label(labels, i, c, strict)
        if k < 0:
            out[i] = np.nan
            continue
        top, total = _row_exp_sum(x, i, c)
        out[i] = top + np.log(total) - np.float64(x[i, k])


@numba.njit(**_opts)
def softmax_ce_grad(x, labels, g, out, strict):
    """``out[i, j] = g[i] * (softmax(x[i])[j] - (j == labels[i]))``: the gradient of ``softmax_ce``."""
    n, c = x.shape
    for i in range(n):
        k = _label(labels, i, c, strict)
        if k < 0:
            for j in range(c):
                out[i, j] = np.nan
            continue
        top, total = _row_exp_sum(x, i, c)
        for j in range(c):
            p = np.exp(np.float64(x[i, j]) - top) / total
            out[i, j] = np.float64(g[i]) * (p - (1.0 if j == k else 0.0))


NJIT_KERNELS = (reduce_axis, fill_random, softmax_ce, softmax_ce_grad)
