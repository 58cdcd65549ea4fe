"""The front end's fast paths: common CPU operations found once, then pushed with little Python.

An elementwise op over contiguous operands of one shape (or a contiguous
array and a Python scalar), a sum or mean of every element of a contiguous
float array, and a product of two contiguous float matrices small enough
for one gemm call make most of the ops a program pushes.  For them the
front end (``ops.math``) skips its general path: an elementwise op's dtypes,
kernel entry point and block layout are found once per (operation, operand
dtypes, shape) and kept in a ``FlatOp``; each call then allocates the
result, packs the block and pushes one op whose body is the kernel (a
native body on the compiled core).  What is pushed is what the general path
pushes for the same call: the same kernel, block, vars, name and record
(``tests/test_ops_front.py`` compares them).
"""

from __future__ import annotations

from functools import partial
from types import MappingProxyType

import numpy as np

from depengine._device import cpu
from depengine._native import _C as _native_core

from . import _blas, _core, _cpu, _kernels, _sum, memory
from ._core import _NO_ATTRS, Elementwise, Record
from ._kernels import CALLS, call
from .array import NDArray, _c_strides

__all__ = ["CPU", "ELEMENTWISE", "GEMM", "SUM", "FlatOp", "flat_op", "gemm_op", "push", "push_flat",
           "push_found", "push_into", "push_matmul", "push_sum", "sum_op"]

CPU = cpu()
_N = ord("N")
_WHOLE = MappingProxyType({"axis": None, "keepdims": False})  # the attrs of a whole-array reduction


class FlatOp:
    """An elementwise op over contiguous operands of one shape, done in one part: found once.

    The front end keys it on (operation, operand dtypes or scalar types,
    shape) and reuses it while ops/ pushes to the same engine (``eng``).
    """

    __slots__ = ("c", "cheap", "entry", "eng", "kind", "name", "native", "op", "packer", "result", "shape",
                 "size", "strides", "work")


def flat_op(eng, op: str, work, result, shape: tuple, operands) -> FlatOp | None:
    """The ``FlatOp`` of ``op`` over ``operands`` (contiguous arrays of ``shape`` and scalars) on ``eng``,
    or None when it takes the general path (an op cut in parts, an mpi engine)."""
    size = 1
    for n in shape:
        size *= n
    if eng.type == "mpi" or _cpu.parts_for(eng, size) != 1:
        return None
    sig = tuple("C" + x.dtype.char if x.__class__ is NDArray else "K" for x in operands)
    spec = FlatOp()
    spec.entry, spec.packer = _kernels.elementwise(op, work, result, "C", sig)
    spec.native = _native_core is not None and eng.options.core == "compiled" and _cpu.NATIVE_BODIES
    spec.name = f"native@{spec.entry:#x}"
    spec.eng, spec.op, spec.work, spec.result, spec.shape, spec.size = eng, op, work, result, shape, size
    spec.strides = _c_strides(shape)
    spec.cheap = size * result.itemsize <= _cpu.INLINE_BYTES
    return _finish(spec, ELEMENTWISE, None, Elementwise, _NO_ATTRS)


ELEMENTWISE, SUM, GEMM = range(3)  # a FlatOp's kind (ops/_front.c's K_*)


def _finish(spec: FlatOp, kind: int, extra, record: type, attrs) -> FlatOp:
    """Set ``spec.c``: what ops/_front.c reads, in this order (the Python version takes ``spec``)."""
    eng = spec.eng
    spec.kind = kind
    spec.c = spec if push is _push_py else (
        eng, eng.new_var, eng.push, _native_core.make_native if spec.native else partial, spec.native,
        spec.entry, spec.op, spec.name, spec.shape, spec.result, spec.size, spec.strides, spec.work,
        spec.work.kind == "f", spec.result.itemsize, CPU, call, eng._drain_records, spec.cheap, kind, extra,
        record, attrs)
    return spec


def _reduction(eng, entry: int, op: str, name: str, shape: tuple, dtype, cheap: bool) -> FlatOp:
    """A FlatOp of a sum or gemm: what its block needs comes in ``_finish``'s ``extra``."""
    spec = FlatOp()
    spec.eng, spec.entry, spec.op, spec.name, spec.cheap = eng, entry, op, name, cheap
    spec.native = _native_core is not None and eng.options.core == "compiled" and _cpu.NATIVE_BODIES
    spec.shape, spec.result, spec.work = shape, dtype, dtype
    spec.size = 1
    for n in shape:
        spec.size *= n
    spec.strides = _c_strides(shape)
    spec.packer = None
    return spec


def sum_op(eng, op: str, a) -> FlatOp:
    """The FlatOp of ``a.sum()`` or ``a.mean()`` (a contiguous float array with elements) on ``eng``."""
    n = a._data.size
    spec = _reduction(eng, _sum.sum_entry(a.dtype), op, op, (), a.dtype, a._data.nbytes <= _cpu.INLINE_BYTES)
    return _finish(spec, SUM, (n, n if op == "mean" else 0), Record, _WHOLE)


def gemm_op(eng, a, b) -> FlatOp:
    """The FlatOp of ``a @ b`` (contiguous 2-d arrays of one float dtype, one gemm call) on ``eng``."""
    (m, k), n = a.shape, b.shape[1]
    f64 = a.dtype == np.float64
    cheap = m * k * n <= _cpu.INLINE_FLOPS
    spec = _reduction(eng, _blas.gemm_entry(), "matmul", "gemm", (m, n), a.dtype, cheap)
    extra = (_blas.routine("dgemm" if f64 else "sgemm"), _N, _N, n, m, k, n, k, n, f64)
    return _finish(spec, GEMM, extra, Record, _NO_ATTRS)


def push_found(cache: dict, key: tuple, eng, find, op, *operands) -> NDArray:
    """Push ``cache[key]``'s FlatOp over ``operands``, found first (``find(eng, [op,] *operands)``) when
    the cache has none for ``eng``."""
    spec = cache.get(key)
    if not spec or spec.eng is not eng:
        spec = cache[key] = find(eng, *operands) if op is None else find(eng, op, *operands)
    return push(spec.c, *operands)


def _push_py(spec: FlatOp, *operands) -> NDArray:
    """``push`` without the C extension: ``push_flat`` (or the reduction's or gemm's) in Python."""
    if spec.kind == SUM:
        return push_sum(spec.eng, spec.op, operands[0])
    if spec.kind == GEMM:
        return push_matmul(spec.eng, *operands)
    return push_flat(spec, operands, tuple(x._var for x in operands if x.__class__ is NDArray))


def push_flat(spec: FlatOp, operands: tuple, reads: tuple) -> NDArray:
    """Allocate the result of ``spec`` and push its op reading ``reads`` (the arrays' vars)."""
    if _core._releases:
        _core.flush_releases()
    eng = spec.eng
    out = NDArray._cpu_owner(eng, eng.new_var(spec.op), spec.shape, spec.result, CPU, spec.size, spec.strides)
    return _push_elementwise(spec, out, operands, reads)


def push_into(spec: FlatOp, out: NDArray, operands: tuple) -> NDArray:
    """Push ``spec``'s op writing into ``out`` (contiguous, of its shape and result dtype: ``x += y``)."""
    if _core._releases:
        _core.flush_releases()
    return _push_elementwise(spec, out, operands, tuple(x._var for x in operands if x.__class__ is NDArray))


def _push_elementwise(spec: FlatOp, out: NDArray, operands: tuple, reads: tuple) -> NDArray:
    values = [0, 1, spec.size, out._addr, 0, 1]
    for x in operands:
        values += (x._addr, 0, 1) if x.__class__ is NDArray else (x, 0, 0)
    block = spec.packer.pack(*values)
    if spec.native:
        body = _native_core.make_native(spec.entry, None, spec.name, block, spec.cheap)
    else:
        body = partial(call, spec.entry, block)
    spec.eng.push(body, reads, [out._var], spec.op, 0, False, None, "normal", True).meta = \
        Elementwise(spec.op, operands, out, spec.work)
    return out


def push_sum(eng, op: str, a) -> NDArray:
    """``a.sum()`` or ``a.mean()`` of a contiguous float array with elements: one native call."""
    if _core._releases:
        _core.flush_releases()
    out = NDArray._cpu_owner(eng, eng.new_var(op), (), a.dtype, CPU, 1, ())
    eng.push(_cpu.sum_body(eng, op, a, out), (a._var,), [out._var], op, 0, False, None, "normal",
             True).meta = Record(op, (a,), out, _WHOLE)
    return out


def push_matmul(eng, a, b) -> NDArray:
    """``a @ b`` of contiguous 2-d arrays of one float dtype, small enough for one gemm call."""
    if _core._releases:
        _core.flush_releases()
    m, n = a.shape[0], b.shape[1]
    out = NDArray._cpu_owner(eng, eng.new_var("matmul"), (m, n), a.dtype, CPU, m * n, (n, 1))
    eng.push(_cpu.gemm_body(eng, a, b, out, (_N, a.shape[1]), (_N, n)), (a._var, b._var), [out._var],
             "matmul", 0, False, None, "normal", True).meta = Record("matmul", (a, b), out)
    return out


def _front():
    """``push(spec.c, x[, y])``: ops/_front.c's when the C extension is there, else ``_push_py``."""
    if CALLS != "C":
        return _push_py
    from . import _native

    _native.front_setup(NDArray, Elementwise, memory, np.empty, memory._take_slow, _core._releases,
                        _core.flush_releases, np.frombuffer)
    return _native.front_push


push = _front()
