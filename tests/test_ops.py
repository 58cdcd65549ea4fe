"""ops/: arrays pushed to the engine, on the CPU and on the simulated GPU."""

from __future__ import annotations

import gc
import os
import weakref

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import depengine as de
import ops as nd
from tests.conftest import use_gpu_runtime


@pytest.fixture
def eng(nd_engine):
    return nd_engine


def gpu():
    return de.gpu(0)


# ------------------------------------------------------------------ basics
def test_user_example(eng):
    a = nd.array(np.arange(6.0).reshape(2, 3))
    b = nd.ones((2, 3), device=gpu())
    c = (a.copyto(b.device) * 2 + b).exp().sum(axis=1)
    want = np.exp(np.arange(6.0).reshape(2, 3) * 2 + 1).sum(axis=1)
    np.testing.assert_allclose(c.asnumpy(), want, rtol=1e-12)
    a += 1
    np.testing.assert_array_equal(a.asnumpy(), np.arange(6.0).reshape(2, 3) + 1)


@pytest.mark.parametrize("where", ["cpu", "gpu"])
def test_creation(eng, where):
    dev = de.cpu() if where == "cpu" else gpu()
    np.testing.assert_array_equal(nd.zeros((2, 3), device=dev).asnumpy(), np.zeros((2, 3)))
    np.testing.assert_array_equal(nd.ones(4, device=dev).asnumpy(), np.ones(4))
    np.testing.assert_array_equal(nd.full((2,), 7.5, device=dev).asnumpy(), [7.5, 7.5])
    np.testing.assert_array_equal(nd.arange(2, 11, 3, dtype=np.float64, device=dev).asnumpy(), [2, 5, 8])
    np.testing.assert_array_equal(nd.array([[1.0, 2.0]], device=dev).asnumpy(), [[1.0, 2.0]])
    assert nd.empty((3, 0), device=dev).asnumpy().shape == (3, 0)
    x = nd.arange(5)
    assert x.dtype == np.int64 and x.asnumpy().tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("where", ["cpu", "gpu"])
def test_views_share_the_var_and_write_through(eng, where):
    dev = de.cpu() if where == "cpu" else gpu()
    a = nd.arange(12.0, device=dev).reshape(3, 4)
    v = a[1:, ::2]
    assert v.var is a.var and a.T.var is a.var and a.reshape(4, 3).var is a.var
    v += 100  # in place into a strided view
    want = np.arange(12.0).reshape(3, 4)
    want[1:, ::2] += 100
    np.testing.assert_array_equal(a.asnumpy(), want)
    a[0] = -1.0
    want[0] = -1
    np.testing.assert_array_equal(a.asnumpy(), want)
    np.testing.assert_array_equal(a.T.asnumpy(), want.T)
    np.testing.assert_array_equal(a[2, 1:3].asnumpy(), want[2, 1:3])
    np.testing.assert_array_equal(a[..., None][1].asnumpy(), want[..., None][1])
    assert float(a[2, 3]) == want[2, 3]


@pytest.mark.parametrize("where", ["cpu", "gpu"])
def test_reductions_and_matmul(eng, where):
    dev = de.cpu() if where == "cpu" else gpu()
    x = np.random.default_rng(3).standard_normal((4, 5, 3))
    a = nd.array(x, device=dev)
    for axis in (None, 0, 1, 2, -1):
        np.testing.assert_allclose(a.sum(axis=axis).asnumpy(), x.sum(axis=axis), rtol=1e-12)
        np.testing.assert_allclose(a.mean(axis=axis).asnumpy(), x.mean(axis=axis), rtol=1e-12)
        np.testing.assert_array_equal(a.max(axis=axis).asnumpy(), x.max(axis=axis))
        np.testing.assert_array_equal(a.min(axis=axis).asnumpy(), x.min(axis=axis))
        np.testing.assert_array_equal(a.argmax(axis=axis).asnumpy(), x.argmax(axis=axis))
    assert a.sum(axis=1, keepdims=True).shape == (4, 1, 3)
    rng = np.random.default_rng(4)
    m, k = rng.standard_normal((2, 6, 7)), rng.standard_normal((7, 3))
    np.testing.assert_allclose((nd.array(m[0], device=dev) @ nd.array(k, device=dev)).asnumpy(), m[0] @ k,
                               rtol=1e-12)
    np.testing.assert_allclose(nd.dot(nd.array(k[:, 0], device=dev), nd.array(k[:, 1], device=dev)).asnumpy(),
                               k[:, 0] @ k[:, 1], rtol=1e-12)
    if where == "cpu":
        np.testing.assert_allclose((nd.array(m) @ nd.array(k)).asnumpy(), m @ k, rtol=1e-12)


# ------------------------------------------------------------- hypothesis
BINARY = ["add", "subtract", "multiply", "maximum", "minimum"]
UNARY = ["tanh", "abs", "negative", "sin", "cos", "square"]


@st.composite
def expressions(draw, gpu_ok: bool):
    dtype = draw(st.sampled_from([np.float64, np.float32] + ([] if gpu_ok else [np.int64])))
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=4, max_side=4))
    elements = st.integers(-5, 5) if dtype == np.int64 else st.integers(-5, 5).map(float)
    arrays = [draw(hnp.arrays(dtype, s, elements=elements)) for s in shapes.input_shapes]
    step = st.tuples(st.sampled_from(BINARY + UNARY), st.integers(0, 2))
    ops = draw(st.lists(step, min_size=1, max_size=4))
    final = draw(st.sampled_from([None, "sum", "max", "mean"]))
    return arrays, ops, final


def _evaluate(lib, arrays, ops, final, wrap):
    vals = [wrap(a) for a in arrays]
    acc = vals[0]
    for op, k in ops:
        acc = getattr(lib, op)(acc) if op in UNARY else getattr(lib, op)(acc, vals[k])
    if final is not None:
        acc = getattr(lib, final)(acc, axis=-1 if acc.ndim else None)
    return acc


@pytest.mark.parametrize("where", ["cpu", "gpu"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_expressions_match_numpy(eng, where, data):
    arrays, ops, final = data.draw(expressions(gpu_ok=where == "gpu"))
    dev = de.cpu() if where == "cpu" else gpu()
    with np.errstate(all="ignore"):
        want = np.asarray(_evaluate(np, arrays, ops, final, lambda a: a))
    got = _evaluate(nd, arrays, ops, final, lambda a: nd.array(a, device=dev)).asnumpy()
    assert got.shape == want.shape
    tol = 1e-4 if want.dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# ----------------------------------------------------------------- random
def _draws(kind, workers, device=None):
    with de.Engine(kind, workers=workers) as e:
        nd.set_engine(e)
        try:
            g = nd.random.Generator(1234)
            first = g.uniform(-1, 1, shape=(50,), device=device)
            second = g.normal(2, 3, shape=(4, 5), device=device)
            return first.asnumpy(), second.asnumpy()
        finally:
            nd.set_engine(None)


def test_random_is_reproducible_across_engines_workers_and_devices(monkeypatch):
    use_gpu_runtime(monkeypatch)
    ref = _draws("naive", 1)
    for kind, workers in (("threaded", 1), ("threaded", 4), ("perdevice", 2)):
        got = _draws(kind, workers)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    on_gpu = _draws("perdevice", 2, device=de.gpu(0))
    np.testing.assert_allclose(on_gpu[0], ref[0], rtol=1e-15)
    np.testing.assert_allclose(on_gpu[1], ref[1], rtol=1e-15)
    assert ref[0].min() >= -1 and ref[0].max() < 1 and len(set(ref[0])) == 50


def test_sampling_ops_write_the_generator_state(eng):
    g = nd.random.Generator(0)
    before = g._var.version
    g.uniform(shape=(3,))
    g.normal(shape=(3,))
    eng.wait_for_var(g._var)
    assert g._var.version == before + 2


# ----------------------------------------------------------------- memory
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.timeout(180)  # 100 000 temporaries through the engine: ~20 s on 2 loaded cores
def test_temporaries_are_released(eng):
    keep = nd.ones((1000,))
    tmp = (keep + 1).wait_to_read()
    probe = weakref.ref(tmp)
    del tmp
    gc.collect()
    assert probe() is None  # nothing holds a finished temporary
    (keep * 1.0).wait_to_read()  # the kernel is compiled (or loaded) before the count starts
    start = _rss_mb()
    for _ in range(100_000):
        keep = keep * 1.0  # each result is 8 KB; all 100,000 would be 800 MB
    keep.wait_to_read()
    grown = _rss_mb() - start
    assert grown < 200, f"memory grew by {grown:.0f} MB over 100,000 temporaries"
    assert keep.var.version == 1 and not keep.var.deleted
    np.testing.assert_array_equal(keep.asnumpy(), np.ones(1000))


# --------------------------------------------------------------- Cholesky
@pytest.mark.parametrize("n, tile", [(1, 4), (64, 64), (200, 64), (257, 100), (300, 512)])
def test_cholesky_matches_numpy(eng, n, tile):
    from bench.cholesky_demo import spd_matrix

    s = spd_matrix(n, seed=n)
    got = nd.linalg.cholesky(nd.array(s), tile=tile).asnumpy()
    want = np.linalg.cholesky(s)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-10


def test_cholesky_factors_the_tiles_in_place_in_the_result(eng):
    """On the CPU the tiles are views of the factor's own storage, each with its own var: a's tiles
    are copied into it once, nothing is copied out again, and one op makes the factor wait for every
    tile.  A transposed (non-contiguous) input and the result's dependents see the finished factor."""
    from bench.cholesky_demo import spd_matrix

    s = spd_matrix(250, seed=3)
    a = nd.array(np.asfortranarray(s)).T  # a view with contiguous columns: the tiles are cut from it
    with de.profile() as prof:
        out = nd.linalg.cholesky(a, tile=100)
        doubled = out * 2.0
        got = doubled.asnumpy() / 2.0
    names = [r.name for r in prof.trace().ops]
    assert names.count("tile") == 6 and names.count("factor") == 1, names
    assert not {"copy", "setitem", "copy part"} & set(names), names
    np.testing.assert_allclose(got, np.linalg.cholesky(s), rtol=0, atol=1e-12 * np.abs(s).max())
    assert out._data.flags.c_contiguous and out._var.version >= 2  # zeroed, then joined


def test_cholesky_on_the_simulated_gpu(eng):
    from bench.cholesky_demo import spd_matrix

    s = spd_matrix(90, seed=1)
    got = nd.linalg.cholesky(nd.array(s, device=gpu()), tile=32).asnumpy()
    want = np.linalg.cholesky(s)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-10


def test_cholesky_of_a_non_spd_matrix_fails_on_read(eng):
    s = np.eye(10)
    s[7, 7] = -1.0
    out = nd.linalg.cholesky(nd.array(s), tile=4)
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        out.asnumpy()


def test_cholesky_tile_kernels_run_in_parallel(eng):
    """The BLAS tile kernels must release the GIL: with 2 workers, tile ops overlap in time."""
    from bench.cholesky_demo import spd_matrix

    a = nd.array(spd_matrix(1536))
    nd.linalg.cholesky(a, tile=256).wait_to_read()  # compile first
    with de.profile() as prof:
        nd.linalg.cholesky(a, tile=256).wait_to_read()
    tiles = [r for r in prof.trace().ops if r.name in ("gemm", "syrk", "trsm")]
    best = 0.0
    for x in tiles:
        for y in tiles:
            if x.lane != y.lane:
                overlap = min(x.end, y.end) - max(x.start, y.start)
                best = max(best, overlap / max(1, min(x.end - x.start, y.end - y.start)))
    assert best > 0.8, "no two tile kernels ran at the same time: do they hold the GIL?"


def test_heat_equation_matches_numpy(eng):
    u0 = np.random.default_rng(2).random((70, 90))
    got = nd.stencil.heat2d(nd.array(u0), 12, tile=32).asnumpy()
    np.testing.assert_allclose(got, nd.stencil.heat2d_reference(u0, 12), rtol=0, atol=1e-13)


# -------------------------------------------------------------- bad input
def test_bad_input_raises_at_call_time_and_pushes_nothing(eng):
    a = nd.ones((2, 3))
    g = nd.ones((2, 3), device=gpu())
    eng.wait_all()
    seq = eng._seq
    with pytest.raises(ValueError, match=r"could not be broadcast together with shapes \(2, 3\) \(4,\)"):
        a + nd.ones(4)
    seq = eng._seq  # ones(4) itself was pushed
    with pytest.raises(ValueError, match=r"operands are on cpu\(0\) and gpu\(0\)"):
        a + g
    with pytest.raises(TypeError, match="dtype complex128 is not supported"):
        nd.zeros(3, dtype=np.complex128)
    with pytest.raises(TypeError, match="int32 is not supported on gpu"):
        nd.zeros(3, dtype=np.int32, device=gpu())
    with pytest.raises(np.exceptions.AxisError):
        a.sum(axis=2)
    with pytest.raises(ValueError, match="not aligned"):
        a @ a
    with pytest.raises(TypeError, match=r"wrap it with ops\.array"):
        a + np.ones(3)
    with pytest.raises(IndexError, match="out of bounds"):
        a[5]
    with pytest.raises(TypeError, match="advanced indexing"):
        a[[0, 1]]
    with pytest.raises(ValueError, match="cannot reshape"):
        a.reshape(4, 2)
    with pytest.raises(ValueError, match="tile=0"):
        nd.linalg.cholesky(nd.ones((2, 2)), tile=0)
    assert eng._seq == seq + 1  # only the second operand ones((2, 2)) above


def test_failures_reach_the_reader(eng):
    a = nd.ones(3)
    b = a.sqrt()
    b._engine.push(lambda ctx: (_ for _ in ()).throw(ValueError("kernel broke")), writes=[b.var])
    c = b + 1
    with pytest.raises(ValueError, match="kernel broke"):
        c.asnumpy()


# ---------------------------------------------------------------- interop
def test_numpy_interop_on_cpu(eng):
    a = nd.arange(6.0).reshape(2, 3)
    view = np.from_dlpack(a)  # zero copy, after pending writes
    np.testing.assert_array_equal(view, np.arange(6.0).reshape(2, 3))
    host = np.arange(4.0)
    b = nd.from_dlpack(host)
    host[0] = 42.0  # shares memory
    assert b.asnumpy()[0] == 42.0
    np.testing.assert_array_equal(np.asarray(a + 1), np.arange(6.0).reshape(2, 3) + 1)
    assert not hasattr(a, "__cuda_array_interface__")
    assert a.__dlpack_device__() == (1, 0)


def test_our_dlpack_capsules_are_valid(eng):
    """The ctypes DLPack exporter used for GPUs, checked on host memory with NumPy as consumer."""
    from ops.interop import KDL_CPU, export_capsule

    src = np.arange(12.0).reshape(3, 4)[:, ::2]

    class Producer:
        def __dlpack__(self, stream=None, **kwargs):
            return export_capsule(src.ctypes.data, src.shape, tuple(s // 8 for s in src.strides), src.dtype,
                                  (KDL_CPU, 0), src)

        def __dlpack_device__(self):
            return (KDL_CPU, 0)

    got = np.from_dlpack(Producer())
    np.testing.assert_array_equal(got, src)
    assert np.shares_memory(got, src)


def test_simulated_gpu_memory_cannot_be_exported(eng):
    g = nd.ones(3, device=gpu())
    with pytest.raises(BufferError, match="simulated"):
        g.__dlpack__()
    assert not hasattr(g, "__cuda_array_interface__")
    assert g.__dlpack_device__() == (2, 0)


def test_torch_roundtrip_if_installed(eng):
    torch = pytest.importorskip("torch")
    t = torch.arange(5, dtype=torch.float64)
    a = nd.from_dlpack(t)
    np.testing.assert_array_equal((a * 2).asnumpy(), np.arange(5.0) * 2)
    back = torch.from_dlpack(nd.arange(3.0))
    assert back.tolist() == [0.0, 1.0, 2.0]
