"""ops: NumPy-like arrays whose every operation is pushed to the depengine engine.

Each call checks its operands, pushes one op that reads and writes the
arrays' vars, and returns at once; ``asnumpy()``/``wait_to_read()`` wait.
Arrays live on ``de.cpu()`` (numba kernels, BLAS) or ``de.gpu(i)`` (CUDA
kernels compiled with NVRTC; the simulated runtime with ``DEPENGINE_GPU=sim``).
"""

from . import autograd, linalg, memory, random, stencil
from . import fusion as _fusion  # noqa: F401  (registers the elementwise fuser for recorded plans)
from ._core import engine, set_engine
from ._kernels import kernel_events
from .array import NDArray, _install_operators
from .creation import arange, array, empty, full, ones, zeros
from .hybrid import HybridPlan, hybridize
from .interop import from_dlpack
from .math import binary as _binary
from .math import dot, matmul
from .math import reduce as _reduce
from .math import unary as _unary
from .nn import log_softmax, relu, sigmoid, softmax, softmax_cross_entropy
from .saved import PlanError, load_plan

_install_operators()


def _named(impl, op: str, doc: str):
    def fn(*args, **kwargs):
        return impl(op, *args, **kwargs)
    fn.__name__ = fn.__qualname__ = op
    fn.__doc__ = doc
    return fn


_UNARY = ("exp", "log", "sqrt", "tanh", "abs", "negative", "sin", "cos", "square", "sign")
_BINARY = ("add", "subtract", "multiply", "divide", "power", "maximum", "minimum",
           "equal", "not_equal", "less", "less_equal", "greater", "greater_equal")
exp, log, sqrt, tanh, abs, negative, sin, cos, square, sign = (
    _named(_unary, n, f"Elementwise {n}(a); pushed, returns at once.") for n in _UNARY)
(add, subtract, multiply, divide, power, maximum, minimum,
 equal, not_equal, less, less_equal, greater, greater_equal) = (
    _named(_binary, n, f"Elementwise {n}(a, b) with broadcasting; pushed, returns at once.") for n in _BINARY)


def sum(a, axis=None, keepdims=False):
    return _reduce("sum", a, axis, keepdims)


def mean(a, axis=None, keepdims=False):
    return _reduce("mean", a, axis, keepdims)


def max(a, axis=None, keepdims=False):
    return _reduce("max", a, axis, keepdims)


def min(a, axis=None, keepdims=False):
    return _reduce("min", a, axis, keepdims)


def argmax(a, axis=None):
    return _reduce("argmax", a, axis, False)


def reshape(a, shape):
    return a.reshape(shape)


def transpose(a, axes=None):
    return a.transpose(axes)


__all__ = [
    "HybridPlan", "NDArray", "PlanError", "abs", "add", "arange", "argmax", "array", "autograd", "cos",
    "divide", "dot", "empty", "engine", "equal", "exp", "from_dlpack", "full", "greater", "greater_equal",
    "hybridize", "kernel_events", "less", "less_equal", "linalg", "load_plan", "log", "log_softmax",
    "matmul", "max", "maximum", "mean", "memory", "min", "minimum", "multiply", "negative", "not_equal",
    "ones", "power", "random", "relu", "reshape", "set_engine", "sigmoid", "sign", "sin", "softmax",
    "softmax_cross_entropy", "sqrt", "square", "stencil", "subtract", "sum", "tanh", "transpose", "zeros",
]
