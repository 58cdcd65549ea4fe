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

from . import _core, _cpu, _kernels, memory
from ._core import _NO_ATTRS, Elementwise, Record
from ._kernels import CALLS, call
from .array import NDArray, _c_strides

__all__ = ["CPU", "FlatOp", "flat_op", "push", "push_flat", "push_into", "push_matmul", "push_sum"]

CPU = cpu()
_N = ord("N")
_WHOLE = MappingProxyType({"axis": None, "keepdims": False})  # the attrs of a whole-array reduction


class FlatOp:
    """An elementwise op over contiguous operands of one shape, done in one part: found once.

    The front end keys it on (operation, operand dtypes or scalar types,
    shape) and reuses it while ops/ pushes to the same engine (``eng``).
    """

    __slots__ = ("c", "cheap", "entry", "eng", "name", "native", "op", "packer", "result", "shape", "size",
                 "strides", "work")


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
    # what ops/_front.c reads (in this order); the Python version takes the FlatOp itself
    spec.c = spec if push is _push_py else (
        eng, eng.new_var, eng.push, _native_core.make_native if spec.native else partial, spec.native,
        spec.entry, op, spec.name, shape, result, size, spec.strides, work, work.kind == "f", result.itemsize,
        CPU, call, eng._drain_records, spec.cheap)
    return spec


def _push_py(spec: FlatOp, *operands) -> NDArray:
    """``push`` without the C extension: ``push_flat`` with the reads found here."""
    return push_flat(spec, operands, tuple(x._var for x in operands if x.__class__ is NDArray))


def push_flat(spec: FlatOp, operands: tuple, reads: tuple) -> NDArray:
    """Allocate the result of ``spec`` and push its op reading ``reads`` (the arrays' vars)."""
    if _core._releases:
        _core.flush_releases()
    eng = spec.eng
    out = NDArray._cpu_owner(eng, eng.new_var(spec.op), spec.shape, spec.result, CPU, spec.size, spec.strides)
    values = [0, 1, spec.size, out._addr, 0, 1]
    for x in operands:
        values += (x._addr, 0, 1) if x.__class__ is NDArray else (x, 0, 0)
    block = spec.packer.pack(*values)
    if spec.native:
        body = _native_core.make_native(spec.entry, None, spec.name, block, spec.cheap)
    else:
        body = partial(call, spec.entry, block)
    eng.push(body, reads, [out._var], spec.op, 0, False, None, "normal", True).meta = \
        Elementwise(spec.op, operands, out, spec.work)
    return out


def push_into(spec: FlatOp, out: NDArray, operands: tuple) -> NDArray:
    """Push ``spec``'s op writing into ``out`` (contiguous, of its shape and result dtype: ``x += y``)."""
    if _core._releases:
        _core.flush_releases()
    values = [0, 1, spec.size, out._addr, 0, 1]
    for x in operands:
        values += (x._addr, 0, 1) if x.__class__ is NDArray else (x, 0, 0)
    block = spec.packer.pack(*values)
    body = _native_core.make_native(spec.entry, None, spec.name, block, spec.cheap) if spec.native else \
        partial(call, spec.entry, block)
    reads = tuple(x._var for x in operands if x.__class__ is NDArray)
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

    _native.front_setup(NDArray, Elementwise, memory, np.empty, memory._take_slow, _NO_ATTRS, _core._releases,
                        _core.flush_releases)
    return _native.front_push


push = _front()
