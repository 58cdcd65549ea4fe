"""Array creation: array, zeros, ones, full, arange, empty (each pushes its fill and returns at once)."""

from __future__ import annotations

import math
import operator

import numpy as np

import depengine as de

from . import _gpu
from ._core import Record, check_dtype, engine, flush_releases, push, runtime
from .array import NDArray

__all__ = ["allocate", "arange", "arange_into", "array", "empty", "fill", "full", "ones", "zeros"]


def _device(device) -> de.Device:
    if device is None:
        return de.cpu()
    if not isinstance(device, de.Device):
        raise TypeError(f"device={device!r} must be de.cpu() or de.gpu(i)")
    return device


def _shape(shape) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape={shape!r} must be an int or a tuple of ints") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"shape={shape!r}: negative dimensions are not allowed")
    return shape


def empty(shape, dtype=np.float64, device=None, owner=None) -> NDArray:
    """An array whose values are undefined until written (``owner``: its rank on an mpi engine)."""
    device = _device(device)
    out = NDArray._empty(_shape(shape), dtype, device, name="empty", owner=owner)
    if device.type == "gpu":  # allocate on the GPU, in stream order
        allocate(out)
    return out


def allocate(out: NDArray) -> None:
    """Push the op that allocates the device memory of ``out`` (a GPU array) in stream order."""
    def alloc(ctx):
        out._store.ensure(runtime(out._engine, out.device), ctx.stream)
    push(alloc, [], [out], "empty", out.device, meta=Record("empty", (), out))


def full(shape, fill_value, dtype=None, device=None, owner=None) -> NDArray:
    """An array of ``shape`` filled with ``fill_value`` (``owner``: its rank on an mpi engine)."""
    device = _device(device)
    if dtype is None:
        dtype = np.result_type(fill_value) if device.type == "cpu" else np.dtype(np.float64)
        if dtype.kind == "i":
            dtype = np.int64
    out = NDArray._empty(_shape(shape), dtype, device, name="full", owner=owner)
    fill(out, fill_value)
    return out


def _contiguous_arg(out: NDArray, rt, stream, what: str):
    if not out._contiguous:
        raise NotImplementedError(f"{what} on a GPU writes only a contiguous array")
    return rt.kernel_arg(out._store.ensure(rt, stream), out.dtype, (out.size,), out._offset)


def fill(out: NDArray, fill_value) -> None:
    """Push the op that sets every element of ``out`` to ``fill_value``."""
    value = out.dtype.type(fill_value)
    if out.device.type == "cpu":
        def fn(ctx):
            out._data.fill(value)
    else:
        def fn(ctx):
            rt = runtime(out._engine, out.device)
            dst = _contiguous_arg(out, rt, ctx.stream, "full")
            _gpu.launch_1d(rt, out.device.index, f"fill_{_gpu.GPU_DTYPES[out.dtype][0]}", out.size,
                           [dst, value, np.int64(out.size)], ctx.stream)
    push(fn, [], [out], "full", out.device, meta=Record("full", (), out, {"value": value.item()}))


def zeros(shape, dtype=np.float64, device=None, owner=None) -> NDArray:
    return full(shape, 0, dtype, device, owner)


def ones(shape, dtype=np.float64, device=None, owner=None) -> NDArray:
    return full(shape, 1, dtype, device, owner)


def arange(start, stop=None, step=1, dtype=None, device=None, owner=None) -> NDArray:
    """Evenly spaced values in [start, stop), like ``numpy.arange``."""
    if stop is None:
        start, stop = 0, start
    if step == 0:
        raise ValueError("arange: step must not be zero")
    n = max(0, math.ceil((stop - start) / step))
    device = _device(device)
    if dtype is None:
        ints = all(isinstance(v, (int, np.integer)) for v in (start, stop, step))
        dtype = np.int64 if ints and device.type == "cpu" else np.float64
    out = NDArray._empty((n,), dtype, device, name="arange", owner=owner)
    arange_into(out, start, step)
    return out


def arange_into(out: NDArray, start, step) -> None:
    """Push the op that writes ``start, start + step, ...`` into the 1-d array ``out``."""
    n = out.size
    if out.device.type == "cpu":
        def fn(ctx):
            out._data[...] = np.arange(start, start + n * step, step, dtype=out.dtype)[:n]
    else:
        def fn(ctx):
            rt = runtime(out._engine, out.device)
            _gpu.launch_1d(rt, out.device.index, f"arange_{_gpu.GPU_DTYPES[out.dtype][0]}", n,
                           [_contiguous_arg(out, rt, ctx.stream, "arange"), out.dtype.type(start),
                            out.dtype.type(step), np.int64(n)], ctx.stream)
    push(fn, [], [out], "arange", out.device, meta=Record("arange", (), out, {"start": start, "step": step}))


def array(obj, dtype=None, device=None, owner=None) -> NDArray:
    """An array holding a copy of ``obj`` (nested lists, a NumPy array, an NDArray...).

    On an mpi engine the array belongs to rank ``owner`` (default 0), whose copy of ``obj`` counts.
    """
    device = _device(device)
    if isinstance(obj, NDArray):
        out = obj.copyto(device)
        return out if dtype is None or np.dtype(dtype) == out.dtype else out.astype(dtype)
    host = np.array(obj, dtype=dtype, copy=True)
    if dtype is None:
        if host.dtype.kind == "i":
            host = host.astype(np.int64 if device.type == "cpu" else np.float64)
        elif host.dtype.kind == "u":
            host = host.astype(np.int64)
    if host.dtype.kind not in "biuf":
        raise TypeError(f"array: dtype {host.dtype} is not supported (booleans, integers and floats are)")
    check_dtype(host.dtype, device)
    flush_releases()
    eng = engine()
    if eng.type == "mpi" or owner is not None:  # a buffer on every rank (owner= elsewhere: an error)
        return NDArray._empty(host.shape, host.dtype, device, name="array", owner=owner, data=host)
    if device.type == "cpu":  # already a private copy: nothing to push
        return NDArray._wrap_host(eng, host, "array", device)
    return NDArray._wrap_host(eng, host, "staging", de.cpu()).copyto(device)
