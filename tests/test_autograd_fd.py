"""Every differentiable ops/ operation: its gradient against finite differences, on the CPU and the
simulated GPU, over shapes, broadcasting and both float dtypes (Hypothesis).

For an operation ``f`` and random weights ``R``, the loss is ``L = sum(f(x...) * R)``.  Its gradient
(``ops.autograd.grad``, computed in the drawn dtype) must give, along random directions ``v``, the
derivative of ``L`` that central differences of the same ops/ operation compute in float64 on the same
device.  Inputs keep away from the points where an operation has no derivative (0 for abs, ties for
max).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import depengine as de
import ops as nd


@pytest.fixture
def eng(nd_engine):
    return nd_engine


def _away(x, margin=0.3):
    """Values at least ``margin`` from 0 (for abs, sign, relu, divide)."""
    return np.where(x >= 0, 1.0, -1.0) * (margin + np.abs(x))


def _distinct(shape, rng):
    """Values with no ties (for max, min, maximum, minimum)."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2) * 0.37 + rng.uniform(-0.05, 0.05, shape)


def _binary(name, fn, low=-1.5, high=1.5, second=None):
    def make(draw, rng, gpu):
        shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3))
        a, b = (rng.uniform(low, high, s) for s in shapes.input_shapes)
        if second is not None:
            b = second(b)
        if name in ("maximum", "minimum"):
            both = _distinct((a.size + b.size,), rng)
            a, b = both[:a.size].reshape(a.shape), both[a.size:].reshape(b.shape)
        return [a, b], fn
    return make


def _unary(fn, low=-1.5, high=1.5, away=False):
    def make(draw, rng, gpu):
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
        x = rng.uniform(low, high, shape)
        return [_away(x) if away else x], fn
    return make


def _reduction(name):
    def make(draw, rng, gpu):
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
        axis = draw(st.sampled_from([None, *range(-len(shape), len(shape))]))
        keepdims = draw(st.booleans())
        return [_distinct(shape, rng)], lambda x: getattr(x, name)(axis=axis, keepdims=keepdims)
    return make


def _matmul(draw, rng, gpu):
    kind = draw(st.sampled_from(["2x2", "1x2", "2x1", "1x1"] + ([] if gpu else ["batch"])))
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))
    shapes = {"2x2": ((m, k), (k, n)), "1x2": ((k,), (k, n)), "2x1": ((m, k), (k,)), "1x1": ((k,), (k,)),
              "batch": ((2, m, k), (k, n))}[kind]
    return [rng.uniform(-1, 1, s) for s in shapes], lambda a, b: a @ b


def _view(draw, rng, gpu):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    kind = draw(st.sampled_from(["reshape", "transpose", "getitem"]))
    if kind == "reshape":
        return [rng.uniform(-1, 1, shape)], lambda x: x.reshape(-1)[::-1].reshape(shape[::-1]) * 1.0
    if kind == "transpose":
        perm = draw(st.permutations(range(len(shape))))
        return [rng.uniform(-1, 1, shape)], lambda x: x.transpose(perm) * 1.0
    key = tuple(draw(st.sampled_from([slice(None), slice(None, None, -1), slice(1, None, 2), 0, None]))
                if n > 1 else slice(None) for n in shape)
    return [rng.uniform(-1, 1, shape)], lambda x: x[key] * 1.0


def _nn(name):
    def make(draw, rng, gpu):
        rows, classes = draw(st.integers(1, 4)), draw(st.integers(2, 4))
        logits = rng.uniform(-2, 2, (rows, classes))
        if name == "softmax_cross_entropy":  # class indices: one op and its gradient op
            lead = (2,) if draw(st.booleans()) else ()
            logits = rng.uniform(-2, 2, (*lead, rows, classes))
            labels = rng.integers(0, classes, (*lead, rows))
            labels = labels.astype(np.float64) if gpu else labels

            def fn(x):
                return nd.softmax_cross_entropy(x, nd.array(labels, device=x.device))
            return [logits], fn
        if name == "softmax_cross_entropy_dense":  # probabilities: log_softmax and array math, both operands
            probs = rng.uniform(0.1, 1, (rows, classes))
            return [logits, probs / probs.sum(axis=1, keepdims=True)], nd.softmax_cross_entropy
        if name in ("relu", "sigmoid"):
            return [_away(logits)], getattr(nd, name)
        axis = draw(st.sampled_from([0, -1]))
        return [logits], lambda x: getattr(nd, name)(x, axis=axis)
    return make


def _astype(draw, rng, gpu):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=4))
    # to float64: the gradient comes back in the operand's dtype (float32 -> float64 -> float32); the other
    # way round would make the finite differences themselves round to float32
    return [rng.uniform(-1, 1, shape)], lambda x: x.astype(np.float64) * 1.0


CASES = {
    "add": _binary("add", lambda a, b: a + b),
    "subtract": _binary("subtract", lambda a, b: a - b),
    "multiply": _binary("multiply", lambda a, b: a * b),
    "divide": _binary("divide", lambda a, b: a / b, second=_away),
    "power": _binary("power", lambda a, b: a ** b, low=0.5, high=2.0),
    "maximum": _binary("maximum", nd.maximum),
    "minimum": _binary("minimum", nd.minimum),
    "scalars": _unary(lambda x: (2.0 - x) * 3.0 / (x + 4.0) - 1.5 ** x + x ** 2.0),
    "exp": _unary(nd.exp), "log": _unary(nd.log, 0.3, 3.0), "sqrt": _unary(nd.sqrt, 0.3, 3.0),
    "tanh": _unary(nd.tanh), "abs": _unary(nd.abs, away=True), "negative": _unary(nd.negative),
    "sin": _unary(nd.sin), "cos": _unary(nd.cos), "square": _unary(nd.square),
    "sign": _unary(lambda x: nd.sign(x) * x, away=True), "copy": _unary(lambda x: x.copy()),
    "sum": _reduction("sum"), "mean": _reduction("mean"), "max": _reduction("max"), "min": _reduction("min"),
    "matmul": _matmul, "views": _view, "astype": _astype,
    "relu": _nn("relu"), "sigmoid": _nn("sigmoid"), "softmax": _nn("softmax"),
    "log_softmax": _nn("log_softmax"), "softmax_cross_entropy": _nn("softmax_cross_entropy"),
    "softmax_cross_entropy_dense": _nn("softmax_cross_entropy_dense"),
}


def _loss(fn, xs, weights):
    out = fn(*xs)
    w = nd.array(weights.astype(out.dtype), device=out.device)
    return (out * w).sum()


@pytest.mark.parametrize("where", ["cpu", "gpu"])
@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float64]))
def test_gradient_matches_finite_differences(eng, where, case, data, seed, dtype):
    device = de.cpu() if where == "cpu" else de.gpu(0)
    rng = np.random.default_rng(seed)
    values, fn = CASES[case](data.draw, rng, where == "gpu")
    values = [v.astype(dtype) for v in values]  # the point, exactly as the drawn dtype holds it
    xs = [nd.array(v, device=device) for v in values]
    for x in xs:
        x.attach_grad()
    weights = rng.standard_normal(fn(*xs).shape)
    with nd.autograd.record():
        loss = _loss(fn, xs, weights)
    grads = [g.asnumpy().astype(np.float64) for g in nd.autograd.grad(loss, xs)]
    for g, v in zip(grads, values, strict=True):
        assert g.shape == v.shape
    eps = 1e-5
    for _ in range(2):
        dirs = [rng.standard_normal(v.shape) for v in values]

        def at(step, dirs=dirs):
            moved = [nd.array(v.astype(np.float64) + step * d, device=device) for v, d in zip(values, dirs,
                                                                                                 strict=True)]
            return float(_loss(fn, moved, weights))
        numeric = (at(eps) - at(-eps)) / (2 * eps)
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, dirs, strict=True))
        scale = sum(float(np.abs(g * d).sum()) for g, d in zip(grads, dirs, strict=True)) + 1e-3
        tol = 2e-3 if dtype == np.float32 else 1e-6
        assert abs(analytic - numeric) <= tol * scale, (
            f"{case} on {where} ({np.dtype(dtype).name}, seed {seed}): analytic {analytic} vs "
            f"finite differences {numeric}, shapes {[v.shape for v in values]}")
