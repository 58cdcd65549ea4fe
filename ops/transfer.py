"""Copies between devices: host-to-device on the GPU's copy stream, device-to-host on copy workers."""

from __future__ import annotations

import numpy as np

import depengine as de

from . import _core, _gpu
from ._core import Record, push, runtime
from .array import NDArray

__all__ = ["copyto"]


def copyto(a: NDArray, target) -> NDArray:
    """Copy ``a`` to device ``target`` (a new array), or into the NDArray ``target``."""
    if isinstance(target, NDArray):
        from .math import assign

        src = a if target.device == a.device else copyto(a, target.device)
        assign(target, src)
        return target
    if not isinstance(target, de.Device):
        raise TypeError(f"copyto({target!r}): expected a device (de.cpu(), de.gpu(i)) or an NDArray")
    if target == a.device:
        return a.copy()
    if a.device.type == "gpu" and target.type == "gpu":
        return copyto(copyto(a, de.cpu()), target)  # through the host
    out = NDArray._empty(a.shape, a.dtype, target, name=f"copy to {target}")
    rec = Record("copyto", (a,), out, {"device": str(target)})
    if _core.tape is not None:
        _core.tape(rec, False)
    if target.type == "gpu":
        def h2d(ctx):
            rt = runtime(out._engine, target)
            rt.copy_htod(out._store.ensure(rt, ctx.stream), np.ascontiguousarray(a._data), ctx.stream)
        push(h2d, [a], [out], f"h2d {a.device}->{target}", target, kind="copy", meta=rec)
    else:
        def d2h(ctx):
            rt = runtime(a._engine, a.device)
            sc = _gpu.Scratch(rt, a.device.index, ctx.stream)
            try:  # a strided view is gathered into contiguous scratch on the copy stream first
                buf, offset = sc.contiguous_buffer(a, a.shape, a.dtype)
                rt.copy_dtoh(out._data, buf, ctx.stream, offset * a.dtype.itemsize)
            finally:
                sc.free()
        push(d2h, [a], [out], f"d2h {a.device}->{target}", target, kind="copy", meta=rec)
    return out
