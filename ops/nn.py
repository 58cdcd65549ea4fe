"""What a model needs beyond array math: activations, softmax and the cross-entropy loss.

``relu`` and ``sigmoid`` are made of array math and differentiate through
its rules.  ``softmax`` and ``log_softmax`` are array math too, with a rule
of their own that reads only their result (``g - exp(y) * sum(g)`` for
``y = log_softmax(x)``), so the shift by the maximum that keeps them finite
costs no gradient op.  ``softmax_cross_entropy`` of class indices is one op
with one kernel per device (``softmax_ce``), and so is its gradient
(``softmax_ce_grad``), as in MXNet; both are operations a saved plan names.
"""

from __future__ import annotations

import numpy as np

from . import _cpu, _gpu, autograd
from . import math as m
from ._core import Record, push_recorded
from ._vjp import Rule, fit
from .array import NDArray, _normalize_axis

__all__ = ["log_softmax", "relu", "sigmoid", "softmax", "softmax_ce", "softmax_ce_grad",
           "softmax_cross_entropy"]


def _float_array(x, what: str) -> None:
    if not isinstance(x, NDArray):
        raise TypeError(f"{what}: expected an NDArray, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{what}: expected a float array, got {x.dtype.name}")


def relu(x: NDArray) -> NDArray:
    """``max(x, 0)`` elementwise; its gradient is 0 at 0."""
    _float_array(x, "relu")
    return m.binary("maximum", x, 0.0)


def sigmoid(x: NDArray) -> NDArray:
    """``1 / (1 + exp(-x))`` elementwise."""
    _float_array(x, "sigmoid")
    return 1.0 / (m.unary("exp", -x) + 1.0)


def log_softmax(x: NDArray, axis: int = -1) -> NDArray:
    """``x - log(sum(exp(x)))`` along ``axis``, computed from ``x - max(x)`` so that it stays finite."""
    _float_array(x, "log_softmax")
    axis = _normalize_axis(axis, x.ndim)
    with autograd.pause():
        shifted = x - x.max(axis=axis, keepdims=True)
        out = shifted - shifted.exp().sum(axis=axis, keepdims=True).log()
    autograd.tape_node("log_softmax", (x,), out, {"axis": axis}, _LOG_SOFTMAX)
    return out


def softmax(x: NDArray, axis: int = -1) -> NDArray:
    """``exp(x) / sum(exp(x))`` along ``axis``, computed from ``x - max(x)``."""
    _float_array(x, "softmax")
    axis = _normalize_axis(axis, x.ndim)
    with autograd.pause():
        e = (x - x.max(axis=axis, keepdims=True)).exp()
        out = e / e.sum(axis=axis, keepdims=True)
    autograd.tape_node("softmax", (x,), out, {"axis": axis}, _SOFTMAX)
    return out


def softmax_cross_entropy(logits: NDArray, label: NDArray) -> NDArray:
    """Per sample, ``-sum(label * log_softmax(logits))`` over the last axis.

    ``label`` holds class indices (the shape of ``logits`` without its last
    axis; integers or integral floats on the CPU, floats on a GPU): then the
    loss is one op (``softmax_ce``) and its gradient another
    (``softmax_ce_grad``: ``softmax(logits) - onehot(label)``).  Or it holds
    one probability per class (the shape of ``logits``), then it is made of
    ``log_softmax`` and array math.  The result has one loss per sample: take
    its ``mean()`` for a scalar loss.
    """
    _float_array(logits, "softmax_cross_entropy")
    if not isinstance(label, NDArray):
        raise TypeError(f"softmax_cross_entropy: label must be an NDArray, got {type(label).__name__}")
    if logits.ndim == 0:
        raise ValueError("softmax_cross_entropy: logits need a class axis (the last)")
    if label.device != logits.device:
        raise ValueError(f"softmax_cross_entropy: label is on {label.device}, logits on {logits.device}")
    if label.shape == logits.shape:
        return -(log_softmax(logits) * label).sum(axis=-1)
    if label.shape != logits.shape[:-1]:
        raise ValueError(f"softmax_cross_entropy: label of shape {label.shape} fits neither the logits' "
                         f"shape {logits.shape} nor their shape without the class axis {logits.shape[:-1]}")
    if label.dtype.kind not in ("f" if logits.device.type == "gpu" else "biuf"):
        raise TypeError(f"softmax_cross_entropy: class indices on {logits.device} are floats, not "
                        f"{label.dtype.name}")
    rows = logits.reshape(-1, logits.shape[-1]) if logits.ndim != 2 else logits
    loss = softmax_ce(rows, label.reshape(-1) if label.ndim != 1 else label)
    return loss.reshape(label.shape) if logits.ndim != 2 else loss


def softmax_ce(x: NDArray, labels: NDArray, out: NDArray | None = None) -> NDArray:
    """``log(sum(exp(x[i]))) - x[i, labels[i]]`` per row of the 2-d ``x``: one op, one kernel."""
    n, c = x.shape
    inplace = out is not None
    out = NDArray._empty((n,), x.dtype, x.device, name="softmax_ce") if out is None else out
    if x.device.type == "cpu":
        xs, ls, os_ = x._data, labels._data, out._data

        def fn(ctx):
            _cpu.softmax_ce(xs, ls, os_, True)
    else:
        def body(sc):
            dst, finish = sc.output(out, (n,), x.dtype)
            _gpu.launch_1d(sc.rt, sc.device, f"softmax_ce_{_gpu.GPU_DTYPES[x.dtype][0]}", n,
                           [dst, sc.contiguous(x, (n, c), x.dtype), sc.contiguous(labels, (n,), x.dtype),
                            np.int64(n), np.int64(c)], sc.stream)
            finish()
        fn = _gpu.gpu_op(out, body)
    rec = Record("softmax_ce", (x, labels), out)
    push_recorded(fn, rec, inplace, "softmax_ce")
    autograd.tape_node("softmax_ce", (x, labels), out, rec.attrs, _SOFTMAX_CE)
    return out


def softmax_ce_grad(x: NDArray, labels: NDArray, g: NDArray, out: NDArray | None = None) -> NDArray:
    """``g[i] * (softmax(x[i]) - onehot(labels[i]))``: the gradient of ``softmax_ce`` for ``x``."""
    n, c = x.shape
    inplace = out is not None
    out = NDArray._empty((n, c), x.dtype, x.device, name="softmax_ce_grad") if out is None else out
    if x.device.type == "cpu":
        xs, ls, gs, os_ = x._data, labels._data, g._data, out._data

        def fn(ctx):
            _cpu.softmax_ce_grad(xs, ls, gs, os_, True)
    else:
        def body(sc):
            dst, finish = sc.output(out, (n, c), x.dtype)
            _gpu.launch_1d(sc.rt, sc.device, f"softmax_ce_grad_{_gpu.GPU_DTYPES[x.dtype][0]}", n,
                           [dst, sc.contiguous(x, (n, c), x.dtype), sc.contiguous(labels, (n,), x.dtype),
                            sc.contiguous(g, (n,), x.dtype), np.int64(n), np.int64(c)], sc.stream)
            finish()
        fn = _gpu.gpu_op(out, body)
    push_recorded(fn, Record("softmax_ce_grad", (x, labels, g), out), inplace, "softmax_ce_grad")
    return out


def _log_softmax_grad(node, g, outs):
    if node.parents[0] is None:
        return (None,)
    axis = node.attrs["axis"]
    return (fit(node, 0, g - node.out.exp() * g.sum(axis=axis, keepdims=True), outs),)


def _softmax_grad(node, g, outs):
    if node.parents[0] is None:
        return (None,)
    y, axis = node.out, node.attrs["axis"]
    return (fit(node, 0, y * (g - (g * y).sum(axis=axis, keepdims=True)), outs),)


def _softmax_ce_grad(node, g, outs):
    x, labels = node.args
    grad = softmax_ce_grad(x, labels, g) if node.parents[0] is not None else None
    return (grad, None)


_LOG_SOFTMAX = Rule(_log_softmax_grad, out=True)
_SOFTMAX_CE = Rule(_softmax_ce_grad, inputs=True)
_SOFTMAX = Rule(_softmax_grad, out=True)
