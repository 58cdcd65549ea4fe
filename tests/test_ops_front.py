"""The front end's fast paths: what they push equals what the general path pushes.

Contiguous elementwise ops of one shape, whole-array sums and means, and
small float matmuls skip most of the front end (their kernel, layout and
body are found once per operation, dtypes and shape); each test compares
them with the general path (forced with ``out=``) and with NumPy, on the
compiled core and on the Python engine (the suite runs twice).
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import depengine as de
import ops as nd
from depengine._native import NATIVE_TYPES
from ops import _cpu, _fast, memory
from ops import math as m


@pytest.fixture
def eng(nd_engine):
    return nd_engine


BINARY = ["add", "subtract", "multiply", "divide", "maximum", "minimum", "less", "equal", "greater_equal"]
UNARY = ["exp", "negative", "abs", "square", "sqrt", "copy"]


@st.composite
def flat_cases(draw):
    dtype = draw(st.sampled_from([np.float64, np.float32, np.int64, np.int32, np.bool_]))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    elements = (st.booleans() if dtype == np.bool_ else st.integers(-5, 5) if dtype in (np.int64, np.int32)
                else st.floats(0.25, 4, width=32))
    a = draw(hnp.arrays(dtype, shape, elements=elements))
    b = draw(hnp.arrays(dtype, shape, elements=elements))
    op = draw(st.sampled_from(BINARY + UNARY))
    other = draw(st.sampled_from(["array", "int", "float", "reflected"]))
    return a, b, op, other


def _numpy(op, a, b, other):
    if op in UNARY:
        return np.copy(a) if op == "copy" else getattr(np, op)(a)
    fn = np.true_divide if op == "divide" else getattr(np, op)
    if other == "array":
        return fn(a, b)
    scalar = 3 if other == "int" else 1.5
    return fn(scalar, a) if other == "reflected" else fn(a, scalar)


def _ops(op, x, y, other, out=None):
    if op in UNARY:
        return m.unary(op, x, out=out)
    scalar = 3 if other == "int" else 1.5
    if other == "array":
        return m.binary(op, x, y, out=out)
    return m.binary(op, scalar, x, out=out) if other == "reflected" else m.binary(op, x, scalar, out=out)


class _Nothing(dict):
    """An ``ops.math._FLAT`` that finds nothing: every call takes the general path."""

    def get(self, key, default=None):
        return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=flat_cases())
def test_fast_paths_equal_the_general_path_and_numpy(eng, case):
    a, b, op, other = case
    if op in ("sqrt", "exp") and a.dtype == np.bool_:
        return
    try:
        with np.errstate(all="ignore"):
            expected = _numpy(op, a, b, other)
    except TypeError:  # NumPy refuses booleans here (ops/ computes them in int64)
        expected = None
    x, y = nd.array(a, dtype=a.dtype), nd.array(b, dtype=b.dtype)
    fast = _ops(op, x, y, other)
    fast_into = _ops(op, x, y, other, out=nd.empty(fast.shape, dtype=fast.dtype))  # x += y's path
    flat = m._FLAT
    m._FLAT = _Nothing()
    try:
        general = _ops(op, x, y, other)
        general_into = _ops(op, x, y, other, out=nd.empty(fast.shape, dtype=fast.dtype))
    finally:
        m._FLAT = flat
    got, ref = fast.asnumpy(), general.asnumpy()
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)  # the same kernel on the same operands: the same bits
    np.testing.assert_array_equal(fast_into.asnumpy(), ref)
    np.testing.assert_array_equal(general_into.asnumpy(), ref)
    if expected is not None:  # (ops/ keeps its own dtype rules for booleans: compare values)
        np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64),
                                   rtol=1e-6 if a.dtype == np.float32 else 1e-13)


def test_the_fast_path_is_taken_and_follows_set_engine(eng):
    a, b = nd.array(np.arange(5.0)), nd.array(np.ones(5))
    m._FLAT.clear()
    c = a + b
    key = ("add", "d", "d", (5,))
    assert isinstance(m._FLAT[key], _fast.FlatOp) and m._FLAT[key].eng is eng
    other = de.Engine("threaded", workers=1)
    try:
        nd.set_engine(other)
        p, q = nd.array(np.arange(5.0)), nd.array(np.ones(5))
        seq = other._seq
        r = p + q  # the remembered op was found for eng: the result must live on `other`
        assert r._engine is other and other._seq == seq + 1
        np.testing.assert_array_equal(r.asnumpy(), np.arange(5.0) + 1)
        other.close()  # still set, but closed: ops/ pushes to the default engine (ops._core.engine())
        p, q = nd.array(np.arange(5.0)), nd.array(np.ones(5))
        r = p + q
        assert r._engine is not other and not r._engine.closed
        np.testing.assert_array_equal(r.asnumpy(), np.arange(5.0) + 1)
        r._engine.close()  # (the default engine this made: its threads must not outlive the test)
    finally:
        nd.set_engine(eng)
        other.close()
    np.testing.assert_array_equal(c.asnumpy(), np.arange(5.0) + 1)


def test_an_op_cut_in_parts_takes_the_general_path_until_the_engine_changes(eng, monkeypatch):
    monkeypatch.setattr(_cpu, "PART_MIN", 4)
    monkeypatch.setattr(_cpu, "_SPLIT_MIN", 8)
    x = nd.array(np.arange(64.0))
    np.testing.assert_array_equal((x + x).asnumpy(), np.arange(64.0) * 2)
    key = ("add", "d", "d", (64,))
    assert m._FLAT[key] is False  # two workers share it: the general path's parts
    naive = de.Engine("naive")
    try:
        nd.set_engine(naive)
        y = nd.array(np.arange(64.0))
        np.testing.assert_array_equal((y + y).asnumpy(), np.arange(64.0) * 2)
        assert m._FLAT[key].eng is naive  # one worker: one part, the fast path
    finally:
        nd.set_engine(eng)
        naive.close()


def test_in_place_operators_take_the_fast_path_into_their_array(eng):
    a = nd.array(np.arange(4.0))
    b = nd.array(np.full(4, 0.5))
    same = a
    eng.wait_all()
    seq, version = eng._seq, a._var.version
    a += b
    a *= 2.0
    a -= 1
    np.testing.assert_array_equal(a.asnumpy(), (np.arange(4.0) + 0.5) * 2.0 - 1)
    assert a is same and eng._seq == seq + 3 and a._var.version == version + 3
    i = nd.array(np.arange(4), dtype=np.int64)
    i += 1
    f32 = nd.array(np.ones(4, np.float32))
    f32 += nd.array(np.ones(4))  # a float64 result into float32: the general path, casting (same_kind)
    eng.wait_all()
    seq = eng._seq
    with pytest.raises(TypeError, match="cannot cast the float64 result to out's int64"):
        i += 1.5  # as NumPy: not a same_kind cast, nothing pushed
    assert eng._seq == seq
    np.testing.assert_array_equal(i.asnumpy(), np.arange(4) + 1)
    np.testing.assert_array_equal(f32.asnumpy(), np.full(4, 2.0, np.float32))


def test_bad_scalars_raise_on_the_fast_path_with_nothing_pushed(eng):
    i32 = nd.ones(4, dtype=np.int32)
    eng.wait_all()
    seq = eng._seq
    with pytest.raises(OverflowError):
        i32 + 2**40  # before the op is remembered
    (i32 + 1).wait_to_read()
    with pytest.raises(OverflowError):
        i32 + 2**40  # and after
    with pytest.raises(TypeError, match="unsupported operand type"):
        i32 + "1"
    assert eng._seq == seq + 1


SIZES = [*range(0, 20), 63, 64, 127, 128, 129, 130, 255, 256, 257, 1000, 1031, 4096, 8193, 100_001]


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_whole_array_sums_and_means_give_numpys_bits(eng, dtype):
    rng = np.random.default_rng(7)
    for n in SIZES:
        x = (rng.random(n) * rng.choice([1.0, 1e8, 1e-8], n)).astype(dtype)
        a = nd.array(x)
        s, mean = a.sum(), a.mean()
        assert s.shape == () and s.dtype == dtype
        assert s.asnumpy() == np.add.reduce(x, dtype=dtype), n
        if n:
            assert mean.asnumpy() == np.mean(x, dtype=dtype), n
        else:  # (NumPy's mean of nothing: nan, and a warning from whichever thread ran it)
            assert np.isnan(mean.asnumpy())
    grid = rng.random((37, 41)).astype(dtype)
    assert nd.array(grid).sum().asnumpy() == np.add.reduce(grid, axis=None, dtype=dtype)
    view = nd.array(grid)[:, ::2]  # not contiguous: the general path
    np.testing.assert_allclose(view.sum().asnumpy(), grid[:, ::2].sum(), rtol=1e-5)


def test_sum_and_gemm_bodies_are_native_on_the_compiled_core(eng):
    compiled = eng.options.core == "compiled"
    a = nd.array(np.ones((3, 4)))
    b = nd.array(np.ones((4, 2)))
    out = nd.empty((3, 2))
    layout = (ord("N"), 4), (ord("N"), 2)
    assert isinstance(_cpu.gemm_body(eng, a, b, out, *layout), NATIVE_TYPES) == compiled
    assert isinstance(_cpu.sum_body(eng, "sum", a, nd.empty(())), NATIVE_TYPES) == compiled


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mkn", [(64, 64, 64), (3, 5, 7), (1, 4, 1), (100, 1, 3), (2, 3, 1)])
def test_small_matmuls_equal_numpy_in_every_layout(eng, dtype, mkn):
    mm, k, n = mkn
    rng = np.random.default_rng(3)
    a, b = rng.random((mm, k)).astype(dtype), rng.random((k, n)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    x, y = nd.array(a), nd.array(b)
    np.testing.assert_allclose((x @ y).asnumpy(), a @ b, rtol=tol)
    xt, yt = nd.array(np.ascontiguousarray(a.T)).T, nd.array(np.ascontiguousarray(b.T)).T
    np.testing.assert_allclose((xt @ yt).asnumpy(), a @ b, rtol=tol)
    big = rng.random((mm + 3, k + 2)).astype(dtype)
    np.testing.assert_allclose((nd.array(big)[1:mm + 1, 2:] @ y).asnumpy(), big[1:mm + 1, 2:] @ b, rtol=tol)
    out = nd.empty((mm, n), dtype=dtype)
    nd.matmul(x, y, out=out)  # the general path into out
    np.testing.assert_array_equal(out.asnumpy(), (x @ y).asnumpy())


@pytest.mark.parametrize("n", [1_003, 10_007, 40_009], ids=["8KB-malloc", "80KB-malloc", "320KB-mapped"])
def test_a_pusher_far_ahead_of_the_workers_reuses_its_buffers(eng, monkeypatch, n):
    """Finished native ops are released by the thread that pushes: a pusher waiting for a pooled
    buffer releases them itself instead of waiting for nothing and allocating fresh memory.  Sizes
    no other test pools: a page and up is pooled, from malloc below MAP_MIN, mapped above."""
    monkeypatch.setattr(memory, "PATIENCE", 2.0)  # long enough for a worker, whatever the load
    nbytes = n * 8
    assert nbytes >= memory.POOL_MIN and (nbytes < memory.MAP_MIN) == (n < 40_000)
    gc.collect()
    before = memory.pool_stats()
    b = nd.array(np.full(n, 0.5))
    c = nd.zeros(n)
    for _ in range(400):
        c = c + b
    np.testing.assert_array_equal(c.asnumpy(), np.full(n, 200.0))
    after = memory.pool_stats()
    assert not memory.stalled(nbytes)
    assert after["misses"] - before["misses"] <= memory.IN_FLIGHT + 3  # b, c and the buffers in flight
    assert after["hits"] - before["hits"] >= 400 - memory.IN_FLIGHT - 3


@pytest.mark.parametrize("n", [1_001, 100_003], ids=["8KB-inline", "800KB-worker"])
def test_results_the_user_keeps_do_not_make_the_pusher_wait(eng, monkeypatch, n):
    """More than IN_FLIGHT buffers of one size held by the user: a pusher that finds none free waits
    only while ops are pending (they may give one back), never for the user.  With 30 s of patience
    a wait for the user would end the test by its timeout."""
    monkeypatch.setattr(memory, "PATIENCE", 30.0)
    a = nd.ones(n)
    keep = []
    for _ in range(3 * memory.IN_FLIGHT):
        t = a * 2.0
        keep.append(t + 1.0)
    np.testing.assert_array_equal(keep[-1].asnumpy(), np.full(n, 3.0))
    assert memory.pool_stats()["waits"] > 0  # (it did look for a free buffer, and found none)


@pytest.mark.parametrize("n", [600, 3_001, 70_001])
def test_pooled_buffers_start_on_a_cache_line(eng, n):
    arrays = [nd.zeros(n) + 1.0 for _ in range(3)]
    assert all(a._addr % memory.ALIGN == 0 for a in arrays)
    assert all(np.from_dlpack(a).ctypes.data == a._addr for a in arrays)
    np.testing.assert_array_equal(arrays[2].asnumpy(), np.ones(n))


def test_the_c_front_end_makes_what_the_python_one_makes(eng):
    """``_fast.push`` (ops/_front.c where the extension is built) against ``_fast.push_flat``: the same
    array in every slot, one op each, the same values."""
    a, b = nd.array(np.arange(6.0).reshape(2, 3)), nd.array(np.full((2, 3), 0.5))
    a + b, a * 2.0  # the fast path remembers the ops
    spec, times = m._FLAT[("add", "d", "d", (2, 3))], m._FLAT[("multiply", "d", float, (2, 3))]
    eng.wait_all()
    seq = eng._seq
    c_made = _fast.push(spec.c, a, b)
    py_made = _fast.push_flat(spec, (a, b), (a._var, b._var))
    scalar_made = _fast.push(times.c, a, 2.0)
    assert eng._seq == seq + 3
    for name in ("shape", "dtype", "device", "_offset", "_strides", "_flat", "_base", "_ag", "_engine"):
        assert getattr(c_made, name) == getattr(py_made, name), name
    assert c_made._var is not py_made._var and c_made._addr != py_made._addr
    assert c_made._addr == c_made._data.__array_interface__["data"][0]
    np.testing.assert_array_equal(c_made.asnumpy(), py_made.asnumpy())
    np.testing.assert_array_equal(scalar_made.asnumpy(), np.arange(6.0).reshape(2, 3) * 2)


@pytest.mark.skipif(m.front_op is None, reason="the C extension ops._native is not built")
def test_operators_reach_ops_found_before_in_c_and_leave_the_rest_to_python(eng):
    a, b = nd.array(np.arange(1.0, 5.0)), nd.array(np.full(4, 2.0))
    calls = (("add", a, b), ("multiply", a, 3.0), ("subtract", 3.0, a), ("exp", a))
    for args in calls:  # found by the Python front end first
        m.binary(*args) if len(args) == 3 else m.unary(*args)
    eng.wait_all()
    seq = eng._seq
    got = [m.front_op(*args) for args in calls]
    assert eng._seq == seq + 4 and all(r is not None and r._engine is eng for r in got)
    flat = m._FLAT
    m._FLAT = _Nothing()
    try:
        expected = [m.binary(*args) if len(args) == 3 else m.unary(*args) for args in calls]
    finally:
        m._FLAT = flat
    for r, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(r.asnumpy(), e.asnumpy())
    i = nd.array(np.arange(4), dtype=np.int32)
    i + 1
    seq = eng._seq
    assert m.front_op("add", a, nd.array(np.ones((2, 4)))) is None  # broadcasting
    assert m.front_op("add", a[::2], b[::2]) is None  # not contiguous
    assert m.front_op("add", a, True) is None  # a bool is not a scalar it takes
    assert m.front_op("add", i, 1) is None  # int32 work: ops.math casts the scalar (and may raise)
    assert m.front_op("divide", a, b) is None  # not found yet
    with nd.autograd.record():
        assert m.front_op("add", a, b) is None  # the tape sees every op
    assert eng._seq == seq


@pytest.mark.skipif(m.front_into is None, reason="the C extension ops._native is not built")
def test_in_place_operators_reach_their_op_in_c_and_push_what_python_pushes(eng):
    """``x op= y`` on the C path (``front_into``): one op reading x and y, writing x, the same record
    and values as ``_fast.push_into``; whatever does not fit goes back to Python with nothing pushed."""
    a, b = nd.array(np.arange(1.0, 5.0)), nd.array(np.full(4, 2.0))
    a + b, a * 3.0  # found by the Python front end first
    eng.wait_all()
    seq, version = eng._seq, a._var.version
    with de.profile() as prof:
        assert m.front_into("add", a, b) is a and m.front_into("multiply", a, 3.0) is a
        eng.wait_all()
    assert eng._seq == seq + 2 and a._var.version == version + 2
    ops_ = [r for r in prof.trace().ops if r.name in ("add", "multiply")]
    ids = [([v[0] for v in r.reads], [v[0] for v in r.writes]) for r in ops_]
    sa, sb = a._var.serial, b._var.serial
    # (a var read and written is listed as written)
    assert [r.name for r in ops_] == ["add", "multiply"] and ids == [([sb], [sa]), ([], [sa])]
    np.testing.assert_array_equal(a.asnumpy(), (np.arange(1.0, 5.0) + 2.0) * 3.0)
    c = nd.array(np.arange(1.0, 5.0))
    py = _fast.push_into(m._FLAT[("add", "d", "d", (4,))], c, (c, b))
    assert py is c
    np.testing.assert_array_equal(c.asnumpy(), np.arange(1.0, 5.0) + 2.0)
    i = nd.array(np.arange(4), dtype=np.int64)
    f32 = nd.array(np.ones(4, np.float32))
    f64 = nd.array(np.ones(4))
    f32 + f64  # found: a float64 result
    eng.wait_all()
    seq = eng._seq
    assert m.front_into("add", i, 1.5) is None  # int64 += float: the general path refuses it
    assert m.front_into("add", f32, f64) is None  # a float64 result into float32
    assert m.front_into("add", 1.0, a) is None and m.front_into("add", a[::2], b[::2]) is None
    assert m.front_into("subtract", a, b) is None  # not found yet
    with nd.autograd.record():
        assert m.front_into("add", a, b) is None  # the tape sees every op
    assert eng._seq == seq


def test_kernels_have_an_in_place_loop_per_operand_of_the_outputs_dtype(monkeypatch):
    """The generated source: a loop taken when the output is an operand (same start, same row
    stride), reading that operand through the output; none for scalars or operands of another dtype."""
    from ops import _kernels

    sources = {}
    monkeypatch.setattr(_kernels, "_entries", {})
    monkeypatch.setattr(_kernels, "compile_cfunc", lambda name, src, *a: sources.setdefault(name, src) and 1)
    f8, f4 = np.dtype(np.float64), np.dtype(np.float32)
    for sig in [("Cd", "Cd"), ("Cf", "Cd"), ("Cd", "K"), ("Sd", "Cd")]:
        _kernels.elementwise("add", f8, f8, "C", sig)
    _kernels.elementwise("add", f8, f8, "S", ("Cd", "Cd"))
    _kernels.elementwise("exp", f4, f4, "C", ("Cf",))
    cases = {name: [line.strip() for line in src.splitlines() if line.strip().startswith("if op ==")]
             for name, src in sources.items()}
    x, y = "if op == a0p and ors == a0rs:", "if op == a1p and ors == a1rs:"
    assert list(cases.values()) == [[x, y], [y], [x], [y], [], [x]]
    both = sources["_ew_add_float64_float64_C_CdCd"]
    first = both[both.index("if op == a0p"):both.index("if op == a1p")]
    assert "x = o[m]" in first and "a0 = " not in first and "y = a1[m]" in first


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(["add", "subtract", "multiply", "divide", "maximum", "power"]),
       dtype=st.sampled_from([np.float64, np.float32, np.int64]), n=st.integers(1, 3000),
       side=st.sampled_from(["x", "y", "both"]), seed=st.integers(0, 2**16))
def test_kernels_writing_over_an_operand_equal_numpy(eng, op, dtype, n, side, seed):
    """An output that is one of the operands takes the kernel's in-place loop: NumPy's values."""
    rng = np.random.default_rng(seed)
    xv = rng.uniform(0.5, 2.0, n).astype(dtype) if dtype != np.int64 else rng.integers(1, 4, n)
    yv = rng.uniform(0.5, 2.0, n).astype(dtype) if dtype != np.int64 else rng.integers(1, 4, n)
    if op == "divide" and dtype == np.int64:
        op = "add"
    x, y = nd.array(xv), nd.array(yv)
    out = {"x": x, "y": y, "both": x}[side]
    other = x if side == "both" else y
    m.binary(op, x, other, out=out)
    expected = getattr(np, op)(xv, xv if side == "both" else yv)
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=1e-6 if dtype == np.float32 else 1e-13)
    if side != "both":  # the operand not written keeps its values
        np.testing.assert_array_equal((y if side == "x" else x).asnumpy(), yv if side == "x" else xv)


def test_a_cheap_op_after_gpu_work_waits_for_it_on_a_worker(eng):
    """An op naming a var with GPU work waits on the host for it (the engine's prepare hook, on a
    worker): never run where it is pushed, even when it is cheap and ready."""
    values = np.arange(1000.0)
    with de.profile() as prof:
        on_gpu = nd.array(values, device=de.gpu(0)) * 2.0
        back = on_gpu.copyto(de.cpu())  # written by a GPU copy
        result = back + 1.0
        np.testing.assert_array_equal(result.asnumpy(), values * 2.0 + 1.0)
        eng.wait_all()
    workers = {t.name for t in eng.threads()}
    adds = [r for r in prof.trace().ops if r.name == "add"]
    assert adds and all(r.lane in workers for r in adds)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sums_and_gemms_pushed_in_c_equal_their_python_twins(eng, dtype):
    """The FlatOps of a whole-array sum or mean and of a small gemm: ``_fast.push`` (ops/_front.c with the
    extension) and ``_fast._push_py`` push the same op: one each, the same record, the same bits."""
    rng = np.random.default_rng(5)
    a, b = nd.array(rng.random((6, 7)).astype(dtype)), nd.array(rng.random((7, 3)).astype(dtype))
    a.sum(), a.mean(), a @ b  # the front end finds their FlatOps
    specs = [m._FLAT[("sum", a.dtype.char, (6, 7))], m._FLAT[("mean", a.dtype.char, (6, 7))],
             m._FLAT[("matmul", a.dtype.char, (6, 7), (7, 3))]]
    assert [s.kind for s in specs] == [_fast.SUM, _fast.SUM, _fast.GEMM]
    for spec, operands in zip(specs, [(a,), (a,), (a, b)], strict=True):
        eng.wait_all()
        seq = eng._seq
        with de.profile() as prof:
            made = [_fast.push(spec.c, *operands), _fast._push_py(spec, *operands)]
            np.testing.assert_array_equal(made[0].asnumpy(), made[1].asnumpy())
            eng.wait_all()
        assert eng._seq == seq + 2 and made[0].shape == made[1].shape and made[0].dtype == made[1].dtype
        names = [r.name for r in prof.trace().ops]
        assert names == [spec.op, spec.op]
    np.testing.assert_allclose((a @ b).asnumpy(), a.asnumpy() @ b.asnumpy(), rtol=1e-5)
    assert a.sum().asnumpy() == np.add.reduce(a.asnumpy(), axis=None, dtype=dtype)
