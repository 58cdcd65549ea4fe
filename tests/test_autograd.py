"""ops.autograd: the MXNet API, gradient ops as engine ops, the tape's rules and its errors."""

from __future__ import annotations

import numpy as np
import pytest

import depengine as de
import ops as nd
from ops.autograd import AutogradError


@pytest.fixture
def eng(nd_engine):
    return nd_engine


def _reference(x, y, w1, w2):
    """Loss and gradients of the issue's example, by hand in NumPy."""
    z = x @ w1
    h = np.tanh(z)
    logits = h @ w2
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y]).mean()
    g = p.copy()
    g[np.arange(n), y] -= 1
    g /= n
    gw2 = h.T @ g
    gw1 = x.T @ ((g @ w2.T) * (1 - h * h))
    return loss, gw1, gw2


def test_the_issue_example_trains(eng):
    rng = np.random.default_rng(0)
    w1v, w2v = rng.standard_normal((2, 16)) * 0.5, rng.standard_normal((16, 2)) * 0.5
    w1, w2 = nd.array(w1v), nd.array(w2v)
    w1.attach_grad()
    w2.attach_grad()
    xv, yv = rng.standard_normal((32, 2)), rng.integers(0, 2, 32)
    x, y = nd.array(xv), nd.array(yv)
    losses = []
    for _ in range(3):
        want, gw1, gw2 = _reference(xv, yv, w1v, w2v)
        with nd.autograd.record():
            loss = nd.softmax_cross_entropy((x @ w1).tanh() @ w2, y).mean()
        loss.backward()
        np.testing.assert_allclose(float(loss), want, rtol=1e-12)
        np.testing.assert_allclose(w1.grad.asnumpy(), gw1, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(w2.grad.asnumpy(), gw2, rtol=1e-9, atol=1e-12)
        for w in (w1, w2):
            w -= 0.5 * w.grad
        w1v, w2v = w1v - 0.5 * gw1, w2v - 0.5 * gw2
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_recording_is_per_thread_and_scoped(eng):
    import threading

    x = nd.array(np.arange(3.0))
    x.attach_grad()
    assert not nd.autograd.is_recording()
    seen = []
    with nd.autograd.record():
        assert nd.autograd.is_recording()
        t = threading.Thread(target=lambda: seen.append(nd.autograd.is_recording()))
        t.start()
        t.join()
        y = x * 2
        with nd.autograd.pause():
            assert not nd.autograd.is_recording()
            z = x * 3
    assert seen == [False] and not nd.autograd.is_recording()
    assert z._ag is None and y._ag is not None
    with pytest.raises(AutogradError, match=r"not computed inside autograd\.record"):
        z.backward()


def test_grad_req_add_accumulates_and_write_overwrites(eng):
    x = nd.array([1.0, 2.0])
    x.attach_grad(grad_req="add")
    for _ in range(3):
        with nd.autograd.record():
            y = (x * x).sum()
        y.backward()
    np.testing.assert_array_equal(x.grad.asnumpy(), [6.0, 12.0])
    x.attach_grad()  # write, zeros again
    with nd.autograd.record():
        y = (x * x).sum()
    y.backward()
    np.testing.assert_array_equal(x.grad.asnumpy(), [2.0, 4.0])


def test_out_grad_and_retain_graph(eng):
    x = nd.array(np.arange(4.0).reshape(2, 2))
    x.attach_grad()
    with nd.autograd.record():
        y = x * x
    y.backward(nd.array(np.ones((2, 2)) * 3), retain_graph=True)
    np.testing.assert_array_equal(x.grad.asnumpy(), 6 * np.arange(4.0).reshape(2, 2))
    y.backward(nd.array(np.ones((2, 2))))
    np.testing.assert_array_equal(x.grad.asnumpy(), 2 * np.arange(4.0).reshape(2, 2))
    with pytest.raises(AutogradError, match="freed by an earlier backward"):
        y.backward(nd.array(np.ones((2, 2))))


def test_grad_function_leaves_buffers_alone_and_reaches_intermediates(eng):
    x = nd.array([1.0, 2.0, 3.0])
    x.attach_grad()
    with nd.autograd.record():
        h = x.exp()
        y = (h * 2).sum()
    gx, gh = nd.autograd.grad(y, [x, h])
    np.testing.assert_allclose(gx.asnumpy(), 2 * np.exp([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(gh.asnumpy(), [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(x.grad.asnumpy(), [0.0, 0.0, 0.0])


def test_a_shared_operand_sums_its_gradients_and_broadcasting_reduces_them(eng):
    x = nd.array(np.arange(6.0).reshape(2, 3))
    b = nd.array([1.0, 2.0, 3.0])
    s = nd.array(np.array(2.0))
    for a in (x, b, s):
        a.attach_grad()
    with nd.autograd.record():
        y = ((x + b) * x * s).sum() + (b * b).sum()
    y.backward()
    xv, bv = np.arange(6.0).reshape(2, 3), np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(x.grad.asnumpy(), 2 * (2 * xv + bv))
    np.testing.assert_allclose(b.grad.asnumpy(), 2 * xv.sum(axis=0) + 2 * bv)
    np.testing.assert_allclose(s.grad.asnumpy(), ((xv + bv) * xv).sum())


def test_gradient_ops_are_async_engine_ops(eng, gate):
    x = nd.array(np.ones((4, 4)))
    x.attach_grad()
    x.grad.wait_to_read()  # attach_grad's zeros written (version 1)
    eng.push(gate, writes=[x.var], name="gate")  # x is not ready until the gate opens
    with nd.autograd.record():
        y = (x @ x).sum()
    with de.profile() as prof:
        y.backward()  # pushes the gradient ops and returns while they wait for x
        assert gate.started.wait(10)
        assert x.grad.var.version == 1  # attach_grad's zeros only
        gate.open()
        np.testing.assert_array_equal(x.grad.asnumpy(), np.full((4, 4), 8.0))
    names = [r.name for r in prof.trace().ops]
    assert names.count("matmul") == 2 and "full" in names  # x.T @ g and g @ x.T, and the seed


def test_independent_gradients_do_not_wait_for_each_other(eng):
    """The gradients of x and of w in x @ w depend on g only: the engine may run them at once."""
    x, w = nd.array(np.ones((64, 64))), nd.array(np.ones((64, 64)))
    x.attach_grad()
    w.attach_grad()
    with nd.autograd.record():
        y = (x @ w).sum()
    eng.wait_all()
    with de.profile() as prof:
        y.backward()
        eng.wait_all()
    trace = prof.trace()
    mm = [(r.engine, r.id) for r in trace.ops if r.name == "matmul"]
    assert len(mm) == 2
    after: dict = {}
    for e in trace.edges():
        after.setdefault(e.src, []).append(e.dst)

    def reaches(a, b):
        stack, seen = [a], set()
        while stack:
            k = stack.pop()
            if k == b:
                return True
            if k not in seen:
                seen.add(k)
                stack.extend(after.get(k, ()))
        return False
    assert not reaches(mm[0], mm[1]) and not reaches(mm[1], mm[0])
    assert any(reaches(r, mm[0]) and reaches(r, mm[1]) for r in after)  # both wait for the same g


def test_writing_an_array_the_tape_needs_raises_and_pushes_nothing(eng):
    x, w = nd.array(np.ones(3)), nd.array(np.ones(3))
    w.attach_grad()
    with nd.autograd.record():
        y = (x * w).sum()  # the gradient of w reads x
    eng.wait_all()
    seq = eng._seq
    with pytest.raises(AutogradError, match="autograd still needs"):
        x += 1
    with pytest.raises(AutogradError, match="autograd still needs"):
        x[1:] = 5.0
    assert eng._seq == seq
    y.backward()
    x += 1  # the tape let go of x
    np.testing.assert_array_equal(x.asnumpy(), [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(w.grad.asnumpy(), [1.0, 1.0, 1.0])


def test_a_tape_dropped_without_backward_lets_go(eng):
    """Once its results are gone (and the ops that computed them, which hold them, have run)."""
    x, w = nd.array(np.ones(3)), nd.array(np.ones(3))
    w.attach_grad()
    with nd.autograd.record():
        y = (x * w).tanh()  # tanh keeps its result: a cycle the garbage collector breaks
    del y
    eng.wait_all()
    x += 1
    np.testing.assert_array_equal(x.asnumpy(), [2.0, 2.0, 2.0])


def test_in_place_operations_inside_record_are_refused(eng):
    w = nd.array(np.ones(3))
    w.attach_grad()
    x = nd.array(np.ones(3))
    with nd.autograd.record():
        y = w * 2
        with pytest.raises(AutogradError, match="in-place operations are not differentiable"):
            y += 1
        with pytest.raises(AutogradError, match="in-place operations are not differentiable"):
            x += w
        x += 1  # nothing autograd follows: fine
    np.testing.assert_array_equal(x.asnumpy(), [2.0, 2.0, 2.0])


def test_bad_input_raises_before_anything_is_pushed(eng):
    x = nd.array(np.arange(3.0))
    x.attach_grad()
    with nd.autograd.record():
        y = x * 2
    plain = nd.array(np.arange(3.0))
    eng.wait_all()
    seq = eng._seq
    with pytest.raises(ValueError, match=r"shape \(3,\); backward without out_grad needs a single-element"):
        y.backward()
    with pytest.raises(ValueError, match=r"out_grad has shape \(2,\)"):
        y.backward(nd.array([1.0, 1.0]))
    with pytest.raises(AutogradError, match="has no gradient buffer: call attach_grad"):
        plain.grad  # noqa: B018
    with pytest.raises(AutogradError, match=r"variables\[1\] .* has no attach_grad\(\)"):
        nd.autograd.grad(y, [x, plain], head_grads=nd.array(np.ones(3)))
    with pytest.raises(AutogradError, match="nothing to derive"):
        plain.backward()
    with pytest.raises(TypeError, match="gradients need a float array, not int64"):
        nd.arange(3).attach_grad()
    with pytest.raises(ValueError, match="grad_req='sometimes'"):
        x.attach_grad(grad_req="sometimes")
    other = nd.array([1.0])
    other.attach_grad()
    with pytest.raises(AutogradError, match=r"do not depend on variables\[0\]"):
        nd.autograd.grad(y, [other], head_grads=nd.array(np.ones(3)))
    assert eng._seq == seq + 2  # only nd.arange(3) and the gradient buffer of other (nd.array pushes nothing)
    y.backward(nd.array(np.ones(3)))
    np.testing.assert_array_equal(x.grad.asnumpy(), [2.0, 2.0, 2.0])


def test_non_differentiable_results_are_not_followed(eng):
    x = nd.array([1.0, -2.0, 3.0])
    x.attach_grad()
    with nd.autograd.record():
        mask = x > 0
        idx = x.argmax()
        y = (x * mask).sum()
    assert mask._ag is None and idx._ag is None
    y.backward()
    np.testing.assert_array_equal(x.grad.asnumpy(), [1.0, 0.0, 1.0])


@pytest.mark.parametrize("where", ["cpu", "gpu"])
def test_nn_functions_compute_what_numpy_does(eng, where):
    dev = de.cpu() if where == "cpu" else de.gpu(0)
    rng = np.random.default_rng(5)
    z = rng.uniform(-3, 3, (6, 4))
    labels = rng.integers(0, 4, 6)
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    x = nd.array(z, device=dev)
    np.testing.assert_allclose(nd.log_softmax(x).asnumpy(), logp, rtol=1e-12)
    np.testing.assert_allclose(nd.softmax(x, axis=0).asnumpy(), np.exp(z) / np.exp(z).sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(nd.relu(x).asnumpy(), np.maximum(z, 0))
    np.testing.assert_allclose(nd.sigmoid(x).asnumpy(), 1 / (1 + np.exp(-z)), rtol=1e-12)
    lab = nd.array(labels.astype(np.float64) if where == "gpu" else labels, device=dev)
    want = -logp[np.arange(6), labels]
    np.testing.assert_allclose(nd.softmax_cross_entropy(x, lab).asnumpy(), want, rtol=1e-12)
    onehot = np.eye(4)[labels]
    dense = nd.softmax_cross_entropy(x, nd.array(onehot, device=dev))
    np.testing.assert_allclose(dense.asnumpy(), want, rtol=1e-12)


def test_softmax_cross_entropy_checks_its_labels(eng):
    x = nd.array(np.zeros((3, 2)))
    bad = nd.softmax_cross_entropy(x, nd.array([0, 2, 1]))  # 2 is not a class of 2
    with pytest.raises(ValueError, match="not a class index"):
        bad.asnumpy()
    on_gpu = nd.softmax_cross_entropy(x.copyto(de.gpu(0)), nd.array([0.0, 5.0, 1.0], device=de.gpu(0)))
    assert np.isnan(on_gpu.asnumpy()[1]) and not np.isnan(on_gpu.asnumpy()[0])  # kernels cannot raise
    gx, int_labels = nd.zeros((3, 2), device=de.gpu(0)), nd.array([0, 1, 1]).copyto(de.gpu(0))
    eng.wait_all()
    seq = eng._seq
    with pytest.raises(TypeError, match=r"class indices on gpu\(0\) are floats, not int64"):
        nd.softmax_cross_entropy(gx, int_labels)
    with pytest.raises(ValueError, match=r"label of shape \(2,\) fits neither"):
        nd.softmax_cross_entropy(x, nd.array([0, 1]))
    with pytest.raises(TypeError, match="expected a float array, got int64"):
        nd.softmax_cross_entropy(nd.array([[1, 2]]), nd.array([0]))
    assert eng._seq == seq
