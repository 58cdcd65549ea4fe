"""Gradient rules of the differentiable ops/ operations (reverse mode: vector-Jacobian products).

A rule takes a taped node, the gradient ``g`` of the node's result and,
per operand, an array the gradient may be written into (or None), and
returns per operand its gradient (None for scalars and for operands that
need none).  Every gradient is made of ordinary ops/ operations, so it runs
on any device ops/ runs on, asynchronously, and is recorded by a plan like
any other operation.  Gradients of broadcast operands are summed back to
the operand's shape (``fit``).

``Rule.inputs`` and ``Rule.out`` say whether the rule reads the node's
operands or its result: those arrays are held (and may not be written in
place) until the node is freed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from . import math as m
from .array import NDArray
from .creation import empty, zeros

__all__ = ["RULES", "Rule", "fit", "unbroadcast"]


class Rule(NamedTuple):
    fn: object          # fn(node, g, outs) -> tuple of gradients, one per operand
    inputs: bool = False
    out: bool = False


# ----------------------------------------------------------------- helpers
def unbroadcast(g: NDArray, shape: tuple, out: NDArray | None = None) -> NDArray:
    """``g`` summed over the axes that broadcasting added to an operand of ``shape``.

    The last sum writes into ``out`` when it is given and fits.
    """
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    steps = []  # (axis, keepdims) of each sum, on the array left by the previous one
    if lead:
        g = g.reshape((-1, *g.shape[lead:]))
        steps.append((0, False))
    rest = g.shape[1:] if lead else g.shape  # after the first sum, axis i of g is axis i of the operand
    steps += [(i, True) for i, (n, want) in enumerate(zip(rest, shape, strict=True)) if want == 1 and n != 1]
    for k, (axis, keepdims) in enumerate(steps):
        last = k == len(steps) - 1
        target = out if last and out is not None and out.dtype == g.dtype else None
        g = m.reduce("sum", g, axis, keepdims, out=target)
    return g


def fit(node, i: int, g: NDArray, outs) -> NDArray:
    """Gradient ``g`` made to fit operand ``i``: summed to its shape, cast to its dtype."""
    g = unbroadcast(g, node.shapes[i], outs[i])
    dtype = node.dtypes[i]
    return g if g.dtype == dtype else g.astype(dtype)


def _need(node, i: int) -> bool:
    return node.parents[i] is not None


def _expand(g: NDArray, shape: tuple, out: NDArray | None = None) -> NDArray:
    """``g`` (of a shape that broadcasts to ``shape``) written out at ``shape``."""
    target = out if out is not None and out.shape == shape and out.dtype == g.dtype else empty(
        shape, g.dtype, g.device)
    m.assign(target, g)
    return target


def _keepdims_shape(node) -> tuple:
    """The shape of a reduction's result with the reduced axis kept (length 1)."""
    shape, axis = node.shapes[0], node.attrs.get("axis")
    if axis is None:
        return (1,) * len(shape)
    axis %= len(shape)
    return (*shape[:axis], 1, *shape[axis + 1:])


def _each(node, outs, *grads):
    """Per operand: its gradient made to fit, or None where none is needed (a lazy thunk per operand)."""
    return tuple(fit(node, i, make(), outs) if make is not None and _need(node, i) else None
                 for i, make in enumerate(grads))


# -------------------------------------------------------------- elementwise
def _add(n, g, outs):
    return _each(n, outs, lambda: g, lambda: g)


def _subtract(n, g, outs):
    return _each(n, outs, lambda: g, lambda: -g)


def _multiply(n, g, outs):
    a, b = n.args
    return _each(n, outs, lambda: g * b, lambda: g * a)


def _divide(n, g, outs):
    a, b = n.args
    return _each(n, outs, lambda: g / b, lambda: -(g * a) / (b * b))


def _power(n, g, outs):
    a, b = n.args
    log_a = (lambda: m.unary("log", a)) if isinstance(a, NDArray) else (lambda: math.log(a))
    return _each(n, outs, lambda: g * b * a ** (b - 1), lambda: g * n.out * log_a())


def _maximum(n, g, outs):  # ties: the gradient goes to the second operand (relu'(0) = 0)
    a, b = n.args
    return _each(n, outs, lambda: g * m.binary("greater", a, b), lambda: g * m.binary("less_equal", a, b))


def _minimum(n, g, outs):
    a, b = n.args
    return _each(n, outs, lambda: g * m.binary("less", a, b), lambda: g * m.binary("greater_equal", a, b))


def _unary(grad_of):
    def rule(n, g, outs):
        return _each(n, outs, lambda: grad_of(n, g, n.args[0], n.out))
    return rule


_UNARY = {
    "exp": (lambda n, g, x, y: g * y, False, True),
    "log": (lambda n, g, x, y: g / x, True, False),
    "sqrt": (lambda n, g, x, y: (g * 0.5) / y, False, True),
    "tanh": (lambda n, g, x, y: g * (1.0 - y * y), False, True),
    "abs": (lambda n, g, x, y: g * m.unary("sign", x), True, False),
    "negative": (lambda n, g, x, y: -g, False, False),
    "sin": (lambda n, g, x, y: g * m.unary("cos", x), True, False),
    "cos": (lambda n, g, x, y: -(g * m.unary("sin", x)), True, False),
    "square": (lambda n, g, x, y: g * (x * 2.0), True, False),
    "copy": (lambda n, g, x, y: g, False, False),
}


def _astype(n, g, outs):
    return _each(n, outs, lambda: g)  # fit casts back to the operand's dtype


def _copyto(n, g, outs):
    return _each(n, outs, lambda: g.copyto(n.devices[0]))


# --------------------------------------------------------------- reductions
def _sum(n, g, outs):
    return _each(n, outs, lambda: _expand(g.reshape(_keepdims_shape(n)), n.shapes[0], outs[0]))


def _mean(n, g, outs):
    count = 1
    for d in n.shapes[0]:
        count *= d
    count //= max(1, _size(n.out_shape))
    return _each(n, outs, lambda: _expand(g.reshape(_keepdims_shape(n)) * (1.0 / max(count, 1)), n.shapes[0],
                                          outs[0]))


def _size(shape) -> int:
    size = 1
    for d in shape:
        size *= d
    return size


def _extremum(n, g, outs):  # every element equal to the extremum gets the gradient
    x = n.args[0]
    keep = _keepdims_shape(n)
    return _each(n, outs, lambda: m.binary("equal", x, n.out.reshape(keep)) * g.reshape(keep))


# ------------------------------------------------------------------- matmul
def _swap(x: NDArray) -> NDArray:
    axes = list(range(x.ndim))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return x.transpose(axes)


def _matmul(n, g, outs):
    a, b = n.args
    if a.ndim == 1 and b.ndim == 1:  # a dot product: g has no dimension
        return _each(n, outs, lambda: g * b, lambda: g * a)
    a2 = a.reshape(1, a.shape[0]) if a.ndim == 1 else a
    b2 = b.reshape(b.shape[0], 1) if b.ndim == 1 else b
    g2 = g.reshape(*g.shape[:-1], 1, g.shape[-1]) if a.ndim == 1 else g
    g2 = g2.reshape(*g2.shape, 1) if b.ndim == 1 else g2
    plain = a.ndim == b.ndim == 2  # the gradients have the operands' very shapes: write them out directly

    def out(i):
        return outs[i] if plain and outs[i] is not None and outs[i].dtype == n.out_dtype else None

    def grad_a():
        r = m.matmul(g2, _swap(b2), out=out(0))
        return r.reshape(r.shape[:-2] + r.shape[-1:]) if a.ndim == 1 else r

    def grad_b():
        r = m.matmul(_swap(a2), g2, out=out(1))
        return r.reshape(r.shape[:-1]) if b.ndim == 1 else r
    return _each(n, outs, grad_a, grad_b)


# -------------------------------------------------------------------- views
def _reshape(n, g, outs):
    return _each(n, outs, lambda: g.reshape(n.shapes[0]))


def _transpose(n, g, outs):
    axes = n.attrs["arg"]
    inverse = [0] * len(axes)
    for i, a in enumerate(axes):
        inverse[a] = i
    return _each(n, outs, lambda: g.transpose(inverse))


def _getitem(n, g, outs):
    def scatter():
        target = outs[0] if outs[0] is not None and outs[0].dtype == g.dtype else zeros(
            n.shapes[0], g.dtype, g.device)
        if target is outs[0]:
            m.assign(target, 0.0)
        m.assign(target[n.attrs["arg"]], g)
        return target
    return _each(n, outs, scatter)


RULES: dict[str, Rule] = {
    "add": Rule(_add), "subtract": Rule(_subtract), "multiply": Rule(_multiply, inputs=True),
    "divide": Rule(_divide, inputs=True), "power": Rule(_power, inputs=True, out=True),
    "maximum": Rule(_maximum, inputs=True), "minimum": Rule(_minimum, inputs=True),
    **{op: Rule(_unary(fn), inputs=x, out=y) for op, (fn, x, y) in _UNARY.items()},
    "astype": Rule(_astype), "copyto": Rule(_copyto),
    "sum": Rule(_sum), "mean": Rule(_mean), "max": Rule(_extremum, inputs=True, out=True),
    "min": Rule(_extremum, inputs=True, out=True),
    "matmul": Rule(_matmul, inputs=True),
    "reshape": Rule(_reshape), "transpose": Rule(_transpose), "getitem": Rule(_getitem),
}
