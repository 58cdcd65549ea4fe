"""ops.hybridize and plan files: a training step recorded once, replayed, saved and loaded elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import depengine as de
import ops as nd
from ops.autograd import AutogradError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def eng(nd_engine):
    return nd_engine


def mlp(device=None, dtype=np.float32, hidden=16, seed=1):
    """Parameters of a 2 -> hidden -> hidden -> 2 network, with gradient buffers."""
    r = np.random.default_rng(seed)
    shapes = [(2, hidden), (hidden,), (hidden, hidden), (hidden,), (hidden, 2), (2,)]
    params = [nd.array((r.standard_normal(s) * 0.5).astype(dtype), device=device) for s in shapes]
    for p in params:
        p.attach_grad()
    return params


def sgd_step(params, lr=0.1):
    w1, b1, w2, b2, w3, b3 = params

    def step(x, y):
        with nd.autograd.record():
            h = nd.relu(x @ w1 + b1)
            h = (h @ w2 + b2).tanh()
            loss = nd.softmax_cross_entropy(h @ w3 + b3, y).mean()
        loss.backward()
        for p in params:
            p -= lr * p.grad
        return loss
    return step


def batches(n, rows=24, labels_float=False, seed=7):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((rows, 2)).astype(np.float32) for _ in range(n)]
    ys = [rng.integers(0, 2, rows) for _ in range(n)]
    return xs, [y.astype(np.float32) if labels_float else y for y in ys]


@pytest.mark.parametrize("where", ["cpu", "gpu"])
def test_the_hybridized_step_equals_the_imperative_step_bit_for_bit(eng, where):
    device = de.cpu() if where == "cpu" else de.gpu(0)
    xs, ys = batches(6, labels_float=where == "gpu")
    imperative, hybrid = mlp(device), mlp(device)
    step = sgd_step(imperative)
    plan = nd.hybridize(sgd_step(hybrid), nd.array(xs[0], device=device), nd.array(ys[0], device=device))
    for x, y in zip(xs, ys, strict=True):
        want = step(nd.array(x, device=device), nd.array(y, device=device))
        got = plan(x, y)  # NumPy arguments are copied into the recorded inputs
        assert float(got) == float(want)
    for a, b in zip(imperative, hybrid, strict=True):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    assert [id(s) for s in plan.state] == [id(p) for p in hybrid]


def test_hybridize_records_without_running_and_fuses(eng):
    params = mlp()
    before = [p.asnumpy() for p in params]
    versions = [p.var.version for p in params]
    eng.wait_all()
    seq = eng._seq
    plan = nd.hybridize(sgd_step(params), np.zeros((24, 2), np.float32), np.zeros(24, np.int64))
    eng.wait_all()
    assert eng._seq == seq  # nothing of the step ran (and NumPy arguments are wrapped without a push)
    assert [p.var.version for p in params] == versions
    for p, b in zip(params, before, strict=True):
        np.testing.assert_array_equal(p.asnumpy(), b)
    assert plan.plan.fused > 0 and plan.plan.mode == "plan"
    assert len(plan.graph) > 30  # forward, backward and the updates, recorded once


def test_each_call_returns_new_arrays(eng):
    params = mlp()
    xs, ys = batches(2)
    plan = nd.hybridize(sgd_step(params), xs[0], ys[0])
    first, second = plan(xs[0], ys[0]), plan(xs[1], ys[1])
    assert first is not second and first.shape == ()
    assert float(first) != float(second)
    assert float(first) == float(first)  # not overwritten by the second call


def test_outputs_of_every_form(eng):
    a = nd.array(np.arange(3.0))
    assert nd.hybridize(lambda x: None, a)(a) is None
    two = nd.hybridize(lambda x: (x * 2, x + 1), a)(nd.array([1.0, 2.0, 3.0]))
    assert isinstance(two, tuple)
    np.testing.assert_array_equal(two[0].asnumpy(), [2.0, 4.0, 6.0])
    as_list = nd.hybridize(lambda x: [x.sum()], a)(np.ones(3))
    assert isinstance(as_list, list) and float(as_list[0]) == 3.0


def test_bad_arguments_raise_before_anything_is_pushed(eng):
    params = mlp()
    x, y = nd.array(np.zeros((24, 2), np.float32)), nd.array(np.zeros(24, np.int64))
    plan = nd.hybridize(sgd_step(params), x, y)
    eng.wait_all()
    seq = eng._seq
    with pytest.raises(TypeError, match="takes 2 arguments, got 1"):
        plan(x)
    with pytest.raises(ValueError, match=r"argument 0 has shape \(3, 2\); the plan was recorded with \(24,"):
        plan(np.zeros((3, 2)), y)
    with pytest.raises(TypeError, match="argument 1: cannot cast float64 to the input's int64"):
        plan(x, np.zeros(24))
    with pytest.raises(ValueError, match=r"argument 0 is on gpu\(0\)"):
        plan(nd.zeros((24, 2), dtype=np.float32, device=de.gpu(0)), y)
    seq += 1  # that zeros array
    with pytest.raises(TypeError, match="returned int"):
        nd.hybridize(lambda v: 3, x)
    with pytest.raises(TypeError, match="is not callable"):
        nd.hybridize(42, x)
    with nd.autograd.record(), pytest.raises(AutogradError, match=r"hybridize inside autograd\.record"):
        nd.hybridize(sgd_step(params), x, y)
    eng.wait_all()
    assert eng._seq == seq


# ------------------------------------------------------------------ plan files
_FRESH = """
import json, sys
import numpy as np
import ops as nd
data = np.load(sys.argv[2], allow_pickle=False)
plan = nd.load_plan(sys.argv[1])
losses = [float(plan(data[f"x{i}"], data[f"y{i}"])) for i in range(int(data["n"]))]
np.savez(sys.argv[3], *[s.asnumpy() for s in plan.state], losses=np.array(losses))
print(json.dumps({"name": plan.name, "inputs": len(plan.inputs), "state": len(plan.state)}))
"""


@pytest.mark.timeout(120)  # a fresh interpreter imports numba, loads the kernels and runs 5 steps
def test_a_saved_plan_gives_the_same_parameters_in_a_fresh_process(eng, tmp_path):
    xs, ys = batches(5)
    params = mlp()
    plan = nd.hybridize(sgd_step(params), xs[0], ys[0])
    plan.save(tmp_path / "mlp.plan")
    losses = [float(plan(x, y)) for x, y in zip(xs, ys, strict=True)]
    np.savez(tmp_path / "data.npz", n=len(xs), **{f"x{i}": x for i, x in enumerate(xs)},
             **{f"y{i}": y for i, y in enumerate(ys)})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DEPENGINE_GPU", None)
    files = [str(tmp_path / name) for name in ("mlp.plan", "data.npz", "after.npz")]
    out = subprocess.run([sys.executable, "-c", _FRESH, *files], capture_output=True, text=True, env=env,
                         timeout=110)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"name": "step", "inputs": 2, "state": 6}
    after = np.load(tmp_path / "after.npz", allow_pickle=False)
    np.testing.assert_array_equal(after["losses"], losses)
    for k, p in enumerate(params):
        np.testing.assert_array_equal(after[f"arr_{k}"], p.asnumpy())


def test_the_plan_file_is_a_readable_graph_and_plain_arrays(eng, tmp_path):
    params = mlp()
    plan = nd.hybridize(sgd_step(params), *[v[0] for v in batches(1)])
    plan.save(tmp_path / "p.plan")
    with zipfile.ZipFile(tmp_path / "p.plan") as z:
        doc = json.loads(z.read("plan.json"))
        names = z.namelist()
        stored = {b["id"]: np.load(z.open(b["data"]), allow_pickle=False)
                  for b in doc["buffers"] if "data" in b}
    assert doc["format"] == "depengine-plan" and doc["version"] == 1 and doc["device"] == "cpu"
    assert {op["op"] for op in doc["ops"]} <= set(nd.saved.REGISTRY)
    assert {"matmul", "maximum", "tanh", "softmax_ce", "softmax_ce_grad", "sum", "setitem"} <= {
        op["op"] for op in doc["ops"]}
    assert sorted(names) == sorted(["plan.json"] + [f"arrays/{k}.npy" for k in stored])
    by_id = {a["id"]: a for a in doc["arrays"]}
    for k, p in zip(doc["state"], params, strict=True):
        np.testing.assert_array_equal(stored[by_id[k]["buffer"]], p.asnumpy())
    loaded = nd.load_plan(tmp_path / "p.plan")
    assert len(loaded.graph) == len(plan.graph) and len(loaded.state) == 6


def test_loading_pushes_nothing_until_the_plan_is_called(eng, tmp_path):
    plan = nd.hybridize(sgd_step(mlp()), *[v[0] for v in batches(1)])
    plan.save(tmp_path / "p.plan")
    eng.wait_all()
    seq = eng._seq
    loaded = nd.load_plan(tmp_path / "p.plan")
    assert eng._seq == seq
    xs, ys = batches(1)
    assert np.isfinite(float(loaded(xs[0], ys[0])))


def test_a_plan_holding_a_python_function_refuses_to_save(eng, tmp_path):
    x = nd.array(np.ones(4))

    def step(v):
        y = v * 2
        eng.push(lambda ctx: None, reads=[y.var], writes=[y.var], name="my_callback")
        return y + 1
    plan = nd.hybridize(step, x)
    with pytest.raises(nd.PlanError, match=r"op #1 'my_callback' is not an ops/ operation"):
        plan.save(tmp_path / "p.plan")
    noisy = nd.hybridize(lambda v: v + nd.random.uniform(shape=(4,)), x)
    with pytest.raises(nd.PlanError, match=r"op #0 'uniform'"):
        noisy.save(tmp_path / "p.plan")
    assert not os.listdir(tmp_path)  # nothing written, not even a temporary file


def test_a_plan_saved_on_the_gpu_loads_on_the_cpu(eng, tmp_path):
    xs, ys = batches(3, labels_float=True)
    g = de.gpu(0)
    plan = nd.hybridize(sgd_step(mlp(g)), nd.array(xs[0], device=g), nd.array(ys[0], device=g))
    plan.save(tmp_path / "g.plan")
    on_gpu, on_cpu = nd.load_plan(tmp_path / "g.plan"), nd.load_plan(tmp_path / "g.plan", device=de.cpu())
    assert on_gpu.inputs[0].device == g and on_cpu.inputs[0].device == de.cpu()
    for x, y in zip(xs, ys, strict=True):
        want = float(plan(x, y))
        assert float(on_gpu(x, y)) == want
        assert float(on_cpu(x, y)) == pytest.approx(want, rel=1e-5)
    for a, b in zip(plan.state, on_cpu.state, strict=True):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-4, atol=1e-6)
