"""Fusing chains of CPU elementwise ops in recorded plans into one numba kernel.

A recorded plan hands each chain of ops that run back to back to this fuser.
When every op of the chain is an elementwise ops/ op on the CPU over one
shape, and each uses the previous one's result, the chain becomes one kernel
that makes a single pass over the data and writes every op's result (so the
arrays hold exactly what the unfused ops would have written).  Kernels are
generated per chain structure and cached by numba like the others.
"""

from __future__ import annotations

import hashlib

import numba
import numpy as np

from depengine.plan import register_fuser

from . import _cpu
from .array import NDArray
from .math import _ND, _cpu_out, _Elementwise, _pad

__all__ = ["fuse_chain"]

_opts = {"nogil": True, "cache": True, "error_model": "numpy"}
_kernels: dict[str, object] = {}


def _structure(metas):
    """(inputs, steps, key): external inputs, per step (op, work dtype, operand refs)."""
    inputs: list = []
    outs = [m.out for m in metas]
    steps = []
    for k, m in enumerate(metas):
        refs = []
        for x in m.inputs:
            prev = next((j for j in range(k) if outs[j] is x), None)
            if prev is not None:
                refs.append(("t", prev))
            elif isinstance(x, NDArray):
                idx = next((i for i, y in enumerate(inputs) if y is x), None)
                if idx is None:
                    inputs.append(x)
                    idx = len(inputs) - 1
                refs.append(("in", idx))
            else:
                inputs.append(x)
                refs.append(("in", len(inputs) - 1))
        steps.append((m.op, m.work.name, tuple(refs)))
    kinds = tuple(("a", x.dtype.name) if isinstance(x, NDArray) else ("s", type(x).__name__) for x in inputs)
    key = repr((kinds, tuple((s[0], s[1], s[2], o.dtype.name) for s, o in zip(steps, outs, strict=True))))
    return inputs, steps, key


def _source(name: str, scalar: list[bool], steps) -> str:
    ins = [f"in{i}" for i in range(len(scalar))]
    outs = [f"out{k}" for k in range(len(steps))]
    lines = [f"def {name}({', '.join(ins + outs)}):",
             "    for i in range(out0.shape[0]):",
             "        for j in range(out0.shape[1]):",
             "            for k in range(out0.shape[2]):",
             "                for m in range(out0.shape[3]):"]
    pad = " " * 20
    for n, (op, work, refs) in enumerate(steps):
        vals = [f"out{r[1]}[i, j, k, m]" if r[0] == "t" else
                (f"in{r[1]}" if scalar[r[1]] else f"in{r[1]}[i, j, k, m]") for r in refs]
        names = ["x", "y"][:len(vals)]
        for nm, val in zip(names, vals, strict=True):
            lines.append(f"{pad}{nm} = np.{work}({val})")
        lines.append(f"{pad}out{n}[i, j, k, m] = {_cpu._EXPR[op]}")
    return "\n".join(lines) + "\n"


def _kernel(inputs, steps, key: str):
    kernel = _kernels.get(key)
    if kernel is None:
        name = "_fused_" + hashlib.sha1(key.encode()).hexdigest()[:16]
        namespace = {"np": np, "__name__": __name__}
        source = _source(name, [not isinstance(x, NDArray) for x in inputs], steps)
        exec(compile(source, __file__, "exec"), namespace)  # compiled as this file: numba caches it
        kernel = _kernels[key] = numba.njit(**_opts)(namespace[name])
    return kernel


def fuse_chain(specs):
    """One function for a chain of recorded specs, or None when it is not a fusable chain."""
    metas = [s.meta for s in specs]
    if len(metas) < 2 or not all(isinstance(m, _Elementwise) for m in metas):
        return None
    shape = metas[0].shape
    if len(shape) > _ND or any(m.shape != shape or m.out.shape != shape for m in metas):
        return None
    for k in range(1, len(metas)):
        if not any(x is metas[k - 1].out for x in metas[k].inputs):
            return None  # not a chain of results
    inputs, steps, key = _structure(metas)
    kernel = _kernel(inputs, steps, key)
    outs = [m.out for m in metas]
    shape4 = _pad(shape)

    def fused(ctx):
        args = [np.broadcast_to(x._data, shape4) if isinstance(x, NDArray) else x for x in inputs]
        kernel(*args, *[_cpu_out(o) for o in outs])
    return fused, "fused(" + "+".join(m.op for m in metas) + ")"


register_fuser(fuse_chain)
