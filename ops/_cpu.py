"""CPU kernels: serial numba functions compiled with ``nogil=True, cache=True``.

Engine workers call them with the GIL released, so they run in parallel.
Elementwise kernels take operands already broadcast to the output's shape
(read-only 4-d views, possibly with zero strides).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["BINARY", "BINARY_KERNELS", "COMPARE", "REDUCE", "UNARY", "UNARY_KERNELS", "fill_random",
           "reduce_axis"]

BINARY = ("add", "subtract", "multiply", "divide", "power", "maximum", "minimum")
COMPARE = ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")
UNARY = ("exp", "log", "sqrt", "tanh", "abs", "negative", "sin", "cos", "square", "copy")
REDUCE = ("sum", "max", "min", "argmax", "mean")

# error_model="numpy": division by zero gives inf/nan as in NumPy instead of raising
_opts = {"nogil": True, "cache": True, "error_model": "numpy"}

_EXPR = {
    "add": "x + y", "subtract": "x - y", "multiply": "x * y", "divide": "x / y", "power": "x ** y",
    "maximum": "np.maximum(x, y)", "minimum": "np.minimum(x, y)",
    "equal": "x == y", "not_equal": "x != y", "less": "x < y", "less_equal": "x <= y",
    "greater": "x > y", "greater_equal": "x >= y",
    "exp": "np.exp(x)", "log": "np.log(x)", "sqrt": "np.sqrt(x)", "tanh": "np.tanh(x)",
    "abs": "np.abs(x)", "negative": "-x", "sin": "np.sin(x)", "cos": "np.cos(x)", "square": "x * x",
    "copy": "x",
}

# One small kernel per operation, each a 4-d loop over operands already
# broadcast to the output's shape (zero strides where they repeat).  They are
# generated from one template, compiled with this file's name so that numba
# caches them, and compiled lazily: only the operations a program uses.
_TEMPLATE = """
@numba.njit(**_opts)
def {name}({args}, out):
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for k in range(out.shape[2]):
                for m in range(out.shape[3]):
                    {loads}
                    out[i, j, k, m] = {expr}
"""


def _generate(op: str, arity: int):
    name = f"_k_{op}"
    args = "a, b" if arity == 2 else "a"
    loads = "x = a[i, j, k, m]" + ("; y = b[i, j, k, m]" if arity == 2 else "")
    source = _TEMPLATE.format(name=name, args=args, loads=loads, expr=_EXPR[op])
    namespace = {"numba": numba, "np": np, "_opts": _opts, "__name__": __name__}
    exec(compile(source, __file__, "exec"), namespace)
    return namespace[name]


BINARY_KERNELS = {op: _generate(op, 2) for op in BINARY + COMPARE}
UNARY_KERNELS = {op: _generate(op, 1) for op in UNARY}


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
