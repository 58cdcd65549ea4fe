"""Elementwise arithmetic, comparisons, unary math, reductions and matmul.

Each function checks its operands at call time (shapes that cannot
broadcast, mixed devices, unsupported dtypes, bad axes raise at once and
push nothing), allocates the result and pushes one op that reads the
operands' vars and writes the result's.
"""

from __future__ import annotations

import math as _math
import numbers

import numpy as np

from . import _core, _cpu, _fast, _gpu
from ._core import Elementwise, Record, check_dtype, push, push_recorded
from .array import NDArray, _normalize_axis
from .linalg import use_blas

__all__ = ["assign", "astype", "binary", "dot", "front_into", "front_op", "matmul", "matmul_dtype",
           "matmul_shape", "reduce", "reduce_shape", "types", "unary", "unary_dtype"]

_FLOAT_RESULT = {"exp", "log", "sqrt", "tanh", "sin", "cos"}
_COMPARE = frozenset(_cpu.COMPARE)


# ---------------------------------------------------------------- operands
def _operand_device(*xs):
    devices = {x.device for x in xs if isinstance(x, NDArray)}
    if len(devices) > 1:
        names = " and ".join(sorted(map(str, devices)))
        raise ValueError(f"operands are on {names}: copy one with .copyto(device) first")
    return devices.pop()


def _check_operand(x, what: str):
    if isinstance(x, NDArray) or (isinstance(x, (numbers.Number, np.generic)) and not isinstance(x, complex)):
        return x
    if isinstance(x, np.ndarray):
        raise TypeError(f"{what}: got a NumPy array; wrap it with ops.array(...) (on the right device)")
    raise TypeError(f"{what}: unsupported operand type {type(x).__name__}")


def _dtype_of(x):
    return x.dtype if isinstance(x, NDArray) else x  # Python scalars stay weak in result_type


def _shape_of(x) -> tuple:
    return x.shape if isinstance(x, NDArray) else ()


def _broadcast(*shapes) -> tuple:
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        pretty = " ".join(str(tuple(s)) for s in shapes)
        raise ValueError(f"operands could not be broadcast together with shapes {pretty}") from None


def _result(out, shape, dtype, device, op) -> NDArray:
    if out is None:
        return NDArray._empty(shape, dtype, device, name=op)
    if not isinstance(out, NDArray):
        raise TypeError(f"out={out!r} must be an NDArray")
    if out.device != device:
        raise ValueError(f"out is on {out.device} but the operands are on {device}")
    if _broadcast(out.shape, shape) != out.shape:
        raise ValueError(f"{op}: result of shape {shape} does not fit out of shape {out.shape}")
    if not np.can_cast(dtype, out.dtype, casting="same_kind"):
        raise TypeError(f"{op}: cannot cast the {np.dtype(dtype).name} result to out's {out.dtype.name}")
    return out


def _gpu_check(dtype, device, what):
    if device.type == "gpu" and np.dtype(dtype) not in _gpu.GPU_DTYPES:
        raise TypeError(f"{what}: dtype {np.dtype(dtype).name} is not supported on {device} "
                        "(float32 and float64 are)")


# --------------------------------------------------------------- elementwise
_TYPES: dict = {}  # (op, device type, dtype or scalar type of a, of b) -> (work dtype, result dtype)


def types(op: str, a, b, device) -> tuple:
    """Work and result dtypes of ``op(a, b)`` (NumPy's promotion; Python scalars are weak), checked."""
    key = (op, device.type, a.dtype.char if a.__class__ is NDArray else type(a),
           b.dtype.char if b.__class__ is NDArray else type(b))
    hit = _TYPES.get(key)
    if hit is None:
        work = np.result_type(_dtype_of(a), _dtype_of(b))
        if op == "divide" and work.kind in "biu":
            work = np.dtype(np.float64)
        if work == np.bool_ and op in ("subtract", "divide", "power"):
            work = np.dtype(np.int64)
        result = np.dtype(np.bool_) if op in _COMPARE else work
        check_dtype(result, device)
        hit = _TYPES[key] = (work, result)
    return hit


def _scalar(x, work: np.dtype):
    """A Python scalar cast to ``work`` as a kernel takes it (raises now if it does not fit)."""
    return work.type(x).item()


# (op, dtype char or scalar type per operand, shape) -> _fast.FlatOp on the engine it was found for (found
# again for another), or False: the general path (an mpi engine, an op cut in parts); set_engine clears it
_FLAT: dict = {}
_core.engine_caches.append(_FLAT)


def _front_ops():
    """ops/_front.c's ``front_op(op, x[, y])`` and ``front_into(op, x, y)`` (``x op= y``): the
    operators' way to a FlatOp already found (None, None without the C extension)."""
    if _fast.push is _fast._push_py:
        return None, None
    import sys

    from . import _native

    _native.front_dispatch_setup(sys.modules[__name__], _core, _fast.FlatOp, _fast.CPU)
    return _native.front_op, _native.front_into


front_op, front_into = _front_ops()
_CPU = _fast.CPU
_SCALARS = (int, float)


def _flat_op(key, op, operands, shape):
    """``key``'s FlatOp, found (and remembered) now; None: take the general path."""
    if len(_FLAT) >= 1024:
        _FLAT.clear()
    a, b = operands if len(operands) == 2 else (operands[0], None)
    if b is None:
        work = result = unary_dtype(op, a.dtype)
    else:
        work, result = types(op, a, b, _CPU)
        if work.kind not in "fiub":
            return None
        operands = tuple(x if x.__class__ is NDArray else _scalar(x, work) for x in operands)
    spec = _fast.flat_op(_core.engine(), op, work, result, shape, operands)
    _FLAT[key] = spec if spec is not None else False
    return spec


def binary(op: str, a, b, out: NDArray | None = None) -> NDArray:
    """``op`` (add, subtract, ..., or a comparison) of ``a`` and ``b`` with broadcasting."""
    if _core.tape is None and (out is None or (out.__class__ is NDArray and out._flat
                                                and out.device is _CPU)):
        # the common case: contiguous operands of one shape (or one and a scalar), found once per
        # (op, dtypes, shape), pushed into a new array or into out (``+=``) of the result's dtype
        ca, cb = a.__class__, b.__class__
        spec = None
        if ca is NDArray and a._flat and a.device is _CPU:
            if cb is NDArray:
                if b._flat and b.device is _CPU and a.shape == b.shape:
                    key = (op, a.dtype.char, b.dtype.char, a.shape)
                    spec = _FLAT.get(key)
                    if spec is None or (spec and spec.eng is not _core.engine()):
                        spec = _flat_op(key, op, (a, b), a.shape)
                    x, y = a, b
            elif cb in _SCALARS:
                key = (op, a.dtype.char, cb, a.shape)
                spec = _FLAT.get(key)
                if spec is None or (spec and spec.eng is not _core.engine()):
                    spec = _flat_op(key, op, (a, b), a.shape)
                if spec:
                    x, y = a, _scalar(b, spec.work)
        elif cb is NDArray and ca in _SCALARS and b._flat and b.device is _CPU:
            key = (op, ca, b.dtype.char, b.shape)
            spec = _FLAT.get(key)
            if spec is None or (spec and spec.eng is not _core.engine()):
                spec = _flat_op(key, op, (a, b), b.shape)
            if spec:
                x, y = _scalar(a, spec.work), b
        if spec:
            if out is None:
                return _fast.push(spec.c, x, y)
            if out.shape == spec.shape and out.dtype == spec.result and out._engine is spec.eng:
                return _fast.push_into(spec, out, (x, y))
    if a.__class__ is not NDArray:
        a = _check_operand(a, op)
    if b.__class__ is not NDArray:
        b = _check_operand(b, op)
    if isinstance(a, NDArray):
        device = a.device
        if isinstance(b, NDArray):
            if b.device != device:
                _operand_device(a, b)
            shape = a.shape if a.shape == b.shape else _broadcast(a.shape, b.shape)
            reads = (a._var, b._var)
        else:
            shape, reads = a.shape, (a._var,)
    elif isinstance(b, NDArray):
        device, shape, reads = b.device, b.shape, (b._var,)
    else:
        raise TypeError(f"{op}: at least one operand must be an NDArray")
    work, result = types(op, a, b, device)
    compare = op in _COMPARE
    inplace = out is not None
    if out is None:
        out = _fresh(shape, result, device, op)
    else:
        out = _result(out, shape, result, device, op)
        if not compare and work != out.dtype:  # in place into a narrower dtype: compute in out's
            work = out.dtype
    _gpu_check(work, device, op)
    eng = out._engine
    operands = (a if a.__class__ is NDArray else _scalar(a, work),
                b if b.__class__ is NDArray else _scalar(b, work))
    if device.type == "cpu":
        fn, rec = _cpu.elementwise(eng, op, work, out, operands)
        if _core.tape is not None:
            _core.tape(rec, inplace)
        eng.push(fn, reads, [out._var], op, 0, False, None, "normal", True).meta = rec
        return out
    rec = Elementwise(op, operands, out, work)
    if _core.tape is not None:
        _core.tape(rec, inplace)
    n = int(np.prod(shape, dtype=np.int64))
    name = f"{op}_{_gpu.GPU_DTYPES[work][0]}"

    def body(sc):
        dst, finish = _bool_output(sc, out, shape) if compare else sc.output(out, shape, work)
        _gpu.launch_1d(sc.rt, sc.device, name, n,
                       [dst, sc.contiguous(a, shape, work), sc.contiguous(b, shape, work), np.int64(n)],
                       sc.stream)
        finish()
    push(_gpu.gpu_op(out, body), [x for x in (a, b) if isinstance(x, NDArray)], [out], op, device, meta=rec)
    return out


def _fresh(shape, dtype, device, name: str) -> NDArray:
    """A new result array (the CPU path without ``_empty``'s checks: dtypes were checked by ``types``)."""
    if device.type != "cpu":
        return NDArray._empty(shape, dtype, device, name=name)
    if _core._releases:
        _core.flush_releases()
    eng = _core.engine()
    return NDArray._cpu_owner(eng, eng.new_var(name), shape, dtype, device)


def _bool_output(sc, out, shape):
    """Comparison results are bytes: write straight into a contiguous bool ``out``."""
    if not (out.shape == tuple(shape) and out._contiguous and out.dtype == np.bool_):
        raise NotImplementedError("GPU comparisons write only into a whole, contiguous bool array")
    n = int(np.prod(shape, dtype=np.int64))
    return sc.rt.kernel_arg(out._store.ensure(sc.rt, sc.stream), np.uint8, (n,), out._offset), lambda: None


def unary_dtype(op: str, dtype: np.dtype) -> np.dtype:
    """The dtype ``op(a)`` computes in and returns for ``a`` of ``dtype``."""
    if op in _FLOAT_RESULT and dtype.kind in "biu":
        return np.dtype(np.float64)
    if op in ("negative", "square", "sign") and dtype == np.bool_:
        return np.dtype(np.int64)
    return dtype


def unary(op: str, a: NDArray, out: NDArray | None = None) -> NDArray:
    """Elementwise ``op`` (exp, log, sqrt, tanh, abs, negative, sin, cos, square, sign, copy)."""
    if (_core.tape is None and a.__class__ is NDArray and a._flat and a.device is _CPU
            and (out is None or (out.__class__ is NDArray and out._flat and out.device is _CPU))):
        key = (op, a.dtype.char, a.shape)
        spec = _FLAT.get(key)
        if spec is None or (spec and spec.eng is not _core.engine()):
            spec = _flat_op(key, op, (a,), a.shape)
        if spec:
            if out is None:
                return _fast.push(spec.c, a)
            if out.shape == spec.shape and out.dtype == spec.result and out._engine is spec.eng:
                return _fast.push_into(spec, out, (a,))
    if a.__class__ is not NDArray and not isinstance(a, NDArray):
        raise TypeError(f"{op}: expected an NDArray, got {type(a).__name__}")
    dtype = unary_dtype(op, a.dtype)
    _gpu_check(dtype, a.device, op)
    inplace = out is not None
    out = _fresh(a.shape, dtype, a.device, op) if out is None else _result(out, a.shape, dtype, a.device, op)
    if a.device.type == "cpu":
        eng = out._engine
        fn, rec = _cpu.elementwise(eng, op, dtype, out, (a,))
        if _core.tape is not None:
            _core.tape(rec, inplace)
        eng.push(fn, (a._var,), [out._var], op, 0, False, None, "normal", True).meta = rec
        return out
    rec = Elementwise(op, (a,), out, dtype)
    if _core.tape is not None:
        _core.tape(rec, inplace)
    n = a.size
    name = f"{op}_{_gpu.GPU_DTYPES[dtype][0]}"

    def body(sc):
        dst, finish = sc.output(out, a.shape, dtype)
        _gpu.launch_1d(sc.rt, sc.device, name, n, [dst, sc.contiguous(a, a.shape, dtype), np.int64(n)],
                       sc.stream)
        finish()
    push(_gpu.gpu_op(out, body), [a], [out], op, a.device, meta=rec)
    return out


def astype(a: NDArray, dtype, out: NDArray | None = None) -> NDArray:
    """``a`` converted to ``dtype`` (into ``out``, of ``a``'s shape, if given: then its dtype counts)."""
    inplace = out is not None
    if inplace:
        _exact_out(out, a.shape, out.dtype, a.device, "astype")
    else:
        out = NDArray._empty(a.shape, check_dtype(dtype, a.device), a.device, name="astype")
    if a.device.type == "cpu":
        def fn(ctx):
            out._data[...] = a._data
    else:
        _gpu_check(out.dtype, a.device, "astype")
        fn = _gpu_copy(out, a, out.dtype)
    push_recorded(fn, Record("astype", (a,), out), inplace, "astype")
    return out


def _exact_out(out, shape, dtype, device, op) -> None:
    """Check an ``out=`` that must have the result's very shape (reductions, matmul)."""
    if not isinstance(out, NDArray):
        raise TypeError(f"out={out!r} must be an NDArray")
    if out.device != device:
        raise ValueError(f"out is on {out.device} but the operands are on {device}")
    if out.shape != tuple(shape):
        raise ValueError(f"{op}: out has shape {out.shape}, the result has shape {tuple(shape)}")
    if not np.can_cast(dtype, out.dtype, casting="same_kind"):
        raise TypeError(f"{op}: cannot cast the {np.dtype(dtype).name} result to out's {out.dtype.name}")


def _gpu_copy(out: NDArray, src, dtype):
    """A GPU op body writing ``src`` (an array or a scalar, broadcast, cast to ``dtype``) into ``out``."""
    n = out.size

    def body(sc):
        dst, finish = sc.output(out, out.shape, dtype)
        _gpu.launch_1d(sc.rt, sc.device, f"copy_{_gpu.GPU_DTYPES[dtype][0]}", n,
                       [dst, sc.contiguous(src, out.shape, dtype), np.int64(n)], sc.stream)
        finish()
    return _gpu.gpu_op(out, body)


def assign(target: NDArray, value) -> None:
    """``target[...] = value`` (broadcast), pushed as a write to target's var."""
    value = _check_operand(value, "assignment")
    if isinstance(value, NDArray):
        _operand_device(target, value)
    shape = _broadcast(target.shape, _shape_of(value))
    if shape != target.shape:
        raise ValueError(f"could not broadcast a value of shape {_shape_of(value)} into shape {target.shape}")
    dtype = target.dtype
    if target.device.type == "cpu":
        def fn(ctx):
            target._data[...] = value._data if isinstance(value, NDArray) else value
    else:
        fn = _gpu_copy(target, value, dtype)
    push_recorded(fn, Record("setitem", (value,), target), True, "setitem")


# ---------------------------------------------------------------- reductions
def reduce_shape(op: str, shape: tuple, dtype: np.dtype, axis, keepdims: bool) -> tuple:
    """``(outer, n, inner, result shape, result dtype)`` of reducing an array of ``shape`` with ``op``."""
    if axis is None:
        outer, n, inner = 1, _math.prod(shape), 1
        out_shape = (1,) * len(shape) if keepdims else ()
    else:
        ax = _normalize_axis(axis, len(shape))
        outer = _math.prod(shape[:ax])
        n = shape[ax] if shape else 1
        inner = _math.prod(shape[ax + 1:])
        out_shape = shape[:ax] + ((1,) if keepdims else ()) + shape[ax + 1:]
    if n == 0 and op in ("max", "min", "argmax"):
        raise ValueError(f"zero-size array to reduction operation {op} which has no identity")
    if op == "argmax":
        result = np.dtype(np.int64)
    elif op == "mean":
        result = dtype if dtype.kind == "f" else np.dtype(np.float64)
    elif op == "sum" and dtype.kind in "biu":
        result = np.dtype(np.int64)
    else:
        result = dtype
    return outer, n, inner, out_shape, result


def reduce(op: str, a: NDArray, axis=None, keepdims: bool = False, out: NDArray | None = None) -> NDArray:
    """``op`` (sum, mean, max, min, argmax) over ``axis`` (None: every element), into ``out`` if given."""
    if (axis is None and out is None and not keepdims and _core.tape is None and a.__class__ is NDArray
            and a._flat and a.device is _CPU and a.dtype.char in "fd" and op in ("sum", "mean")
            and a._data.size):
        eng = _core.engine()
        if eng.type != "mpi":
            return _fast.push_found(_FLAT, (op, a.dtype.char, a.shape), eng, _fast.sum_op, op, a)
    if not isinstance(a, NDArray):
        raise TypeError(f"{op}: expected an NDArray, got {type(a).__name__}")
    outer, n, inner, out_shape, dtype = reduce_shape(op, a.shape, a.dtype, axis, keepdims)
    _gpu_check(a.dtype if a.dtype.kind == "f" else np.float64, a.device, op)
    inplace = out is not None
    if inplace:
        _exact_out(out, out_shape, dtype, a.device, op)
    else:
        out = NDArray._empty(out_shape, dtype, a.device, name=op)
    if a.device.type == "cpu":
        fn = _cpu.reduce_body(op, a, out, None if axis is None or a.ndim == 0 else axis % a.ndim, keepdims,
                              out._engine)
    else:
        name = f"reduce_{op}_{_gpu.GPU_DTYPES[a.dtype][0]}"

        def body(sc):
            dst, finish = sc.output(out, out_shape, dtype)
            _gpu.launch_1d(sc.rt, sc.device, name, outer * inner,
                           [dst, sc.contiguous(a, a.shape, a.dtype), np.int64(outer), np.int64(n),
                            np.int64(inner)], sc.stream)
            finish()
        fn = _gpu.gpu_op(out, body)
    push_recorded(fn, Record(op, (a,), out, {"axis": axis, "keepdims": keepdims}), inplace, op)
    return out


# -------------------------------------------------------------------- matmul
def matmul_dtype(a: np.dtype, b: np.dtype) -> np.dtype:
    dtype = np.result_type(a, b)
    return np.dtype(np.int64) if dtype == np.bool_ else dtype


def matmul_shape(a, b) -> tuple:
    """The shape of ``a @ b`` (anything with ``shape`` and ``ndim``); raises when they do not align."""
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: operands must have at least one dimension (use * for scalars)")
    ka = a.shape[-1]
    kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if ka != kb:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not aligned: {ka} (dim "
                         f"{a.ndim - 1}) != {kb} (dim {max(b.ndim - 2, 0)})")
    batch = _broadcast(a.shape[:-2], b.shape[:-2]) if a.ndim > 2 or b.ndim > 2 else ()
    m = () if a.ndim == 1 else (a.shape[-2],)
    n = () if b.ndim == 1 else (b.shape[-1],)
    return batch + m + n


def matmul(a: NDArray, b: NDArray, out: NDArray | None = None) -> NDArray:
    """Matrix product with NumPy's rules (``a @ b``), into ``out`` if given; BLAS on the CPU, a tiled
    kernel on GPUs."""
    if (out is None and _core.tape is None and a.__class__ is NDArray and b.__class__ is NDArray
            and a._flat and b._flat and a.device is _CPU and b.device is _CPU and a.dtype is b.dtype
            and a.dtype.char in "fd" and len(a.shape) == len(b.shape) == 2 and a.shape[1] == b.shape[0]
            and a.shape[0] and a.shape[1] and b.shape[1]):  # contiguous float matrices: one gemm call
        eng = _core.engine()
        small = a.shape[0] * b._data.size <= _cpu.MATMUL_SPLIT  # (else NumPy's BLAS, on every core)
        if eng.type != "mpi" and (small or _cpu.workers_for(eng) == 1):
            use_blas()
            return _fast.push_found(_FLAT, ("matmul", a.dtype.char, a.shape, b.shape), eng, _fast.gemm_op,
                                    None, a, b)
    for x in (a, b):
        if not isinstance(x, NDArray):
            raise TypeError(f"matmul: expected NDArrays, got {type(x).__name__}")
    device = _operand_device(a, b)
    shape = matmul_shape(a, b)
    dtype = matmul_dtype(a.dtype, b.dtype)
    check_dtype(dtype, device)
    inplace = out is not None
    if inplace:
        _exact_out(out, shape, dtype, device, "matmul")
    else:
        out = NDArray._empty(shape, dtype, device, name="matmul")
    if device.type == "cpu":
        use_blas()
        fn = _cpu.matmul_body(out._engine, a, b, out)
    else:
        _gpu_check(dtype, device, "matmul")
        if a.ndim > 2 or b.ndim > 2:
            raise NotImplementedError("matmul on a GPU supports 1-d and 2-d operands")
        m = a.shape[0] if a.ndim == 2 else 1
        k = a.shape[-1]
        n = b.shape[1] if b.ndim == 2 else 1
        name = f"matmul_{_gpu.GPU_DTYPES[dtype][0]}"

        def body(sc):
            dst, finish = sc.output(out, (m, n), dtype)
            pa = sc.contiguous(a.reshape(m, k) if a.ndim == 1 else a, (m, k), dtype)
            pb = sc.contiguous(b.reshape(k, n) if b.ndim == 1 else b, (k, n), dtype)
            grid = ((n + 15) // 16, (m + 15) // 16)
            sc.rt.launch(_gpu.kernel(sc.rt, sc.device, name), grid, (16, 16),
                         [dst, pa, pb, np.int64(m), np.int64(n), np.int64(k)], sc.stream)
            finish()
        fn = _gpu.gpu_op(out, body)
    push_recorded(fn, Record("matmul", (a, b), out), inplace, "matmul")
    return out


def dot(a: NDArray, b: NDArray) -> NDArray:
    """``numpy.dot`` for 1-d and 2-d operands (the same as matmul there)."""
    if isinstance(a, NDArray) and isinstance(b, NDArray) and (a.ndim > 2 or b.ndim > 2):
        raise NotImplementedError("dot supports 1-d and 2-d operands; use matmul for stacks")
    return matmul(a, b)

