"""What a model needs beyond array math: activations, softmax and the cross-entropy loss.

Each is made of ordinary ops/ operations (so a recorded plan holds, and a
saved plan names, only those), and each is differentiable: ``relu`` and
``sigmoid`` through the rules of the operations they are made of,
``softmax`` and ``log_softmax`` through a rule of their own that reads only
their result (``g - exp(y) * sum(g)`` for ``y = log_softmax(x)``), so the
shift by the maximum that keeps them finite costs no gradient op.
"""

from __future__ import annotations

from . import autograd
from . import math as m
from ._vjp import Rule, fit
from .array import NDArray, _normalize_axis
from .creation import arange

__all__ = ["log_softmax", "relu", "sigmoid", "softmax", "softmax_cross_entropy"]


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
    axis; integers on the CPU, floats on a GPU) or one probability per class
    (the shape of ``logits``).  The result has one loss per sample: take its
    ``mean()`` for a scalar loss.
    """
    _float_array(logits, "softmax_cross_entropy")
    if not isinstance(label, NDArray):
        raise TypeError(f"softmax_cross_entropy: label must be an NDArray, got {type(label).__name__}")
    if logits.ndim == 0:
        raise ValueError("softmax_cross_entropy: logits need a class axis (the last)")
    if label.device != logits.device:
        raise ValueError(f"softmax_cross_entropy: label is on {label.device}, logits on {logits.device}")
    if label.shape == logits.shape:
        dense = label
    elif label.shape == logits.shape[:-1]:
        classes = arange(logits.shape[-1], dtype=label.dtype, device=label.device)
        dense = m.binary("equal", label.reshape(*label.shape, 1), classes)
    else:
        raise ValueError(f"softmax_cross_entropy: label of shape {label.shape} fits neither the logits' "
                         f"shape {logits.shape} nor their shape without the class axis {logits.shape[:-1]}")
    return -(log_softmax(logits) * dense).sum(axis=-1)


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


_LOG_SOFTMAX = Rule(_log_softmax_grad, out=True)
_SOFTMAX = Rule(_softmax_grad, out=True)
