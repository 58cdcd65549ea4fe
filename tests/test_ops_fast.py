"""ops/ fast paths: kernels split into parts, fused plans that drop intermediates, the buffer pool,
kernels loaded from numba's cache, and bad input that pushes nothing."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import depengine as de
import ops as nd
from depengine._native import NATIVE_TYPES
from ops import _cpu, _kernels, memory


@pytest.fixture
def eng(nd_engine):
    return nd_engine


@pytest.fixture
def small_parts(monkeypatch):
    """Split every op of more than 8 elements into parts of at least 4 (real splits are for 128K+)."""
    monkeypatch.setattr(_cpu, "PART_MIN", 4)
    monkeypatch.setattr(_cpu, "_SPLIT_MIN", 8)


# ------------------------------------------------------- parts == whole
OPS = ["add", "subtract", "multiply", "maximum", "less", "exp", "tanh", "negative", "square"]


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from([np.float64, np.float32, np.int64]))
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=3, min_side=1,
                                                    max_side=9))
    elements = st.integers(-3, 3) if dtype == np.int64 else st.floats(-3, 3, width=32)
    a = draw(hnp.arrays(dtype, shapes.input_shapes[0], elements=elements))
    b = draw(hnp.arrays(dtype, shapes.input_shapes[1], elements=elements))
    op = draw(st.sampled_from(OPS))
    view = draw(st.sampled_from(["none", "transpose", "step", "scalar"]))
    inplace = draw(st.booleans())
    return a, b, op, view, inplace


def _apply(lib, op, a, b):
    if op in ("exp", "tanh", "negative", "square"):
        return getattr(lib, op)(a)
    return getattr(lib, op)(a, b)


def _run(case, wrap):
    a, b, op, view, inplace = case
    x, y = wrap(a), wrap(b)
    if view == "transpose":
        x, y = x.T, y.T
    elif view == "step":
        x = x[..., ::2]
    elif view == "scalar":
        y = 2
    if inplace and op not in ("less",) and not isinstance(y, int):
        try:
            shape = np.broadcast_shapes(np.shape(x), np.shape(y))
        except ValueError:
            return None
        if shape == np.shape(x) and op not in ("exp", "tanh", "negative", "square"):
            target = x.copy()
            if isinstance(target, np.ndarray):
                getattr(np, op)(target, y, out=target, casting="unsafe")
                return target
            getattr(nd, op)(target, y, out=target)
            return target.asnumpy()
    try:
        with np.errstate(all="ignore"):
            got = _apply(nd if not isinstance(x, np.ndarray) else np, op, x, y)
    except ValueError:
        return "ValueError"
    return got if isinstance(got, np.ndarray) else got.asnumpy()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_parts_equal_the_whole_and_numpy(eng, small_parts, case):
    split = _run(case, nd.array)
    whole = _run(case, lambda v: v)
    if isinstance(whole, str) or isinstance(split, str):
        assert split == whole
        return
    if split is None:
        return
    assert split.shape == whole.shape and split.dtype == whole.dtype
    tol = 1e-5 if whole.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(split, whole, rtol=tol, atol=tol)


def test_a_split_op_is_one_op(eng, small_parts):
    a = nd.array(np.arange(1000.0))
    with de.profile() as prof:
        b = a + 1.0
        b.wait_to_read()
        eng.wait_all()  # a helper that found every part taken may still be queued when the op ends
    assert b.var.version == 1
    np.testing.assert_array_equal(b.asnumpy(), np.arange(1000.0) + 1)
    records = prof.trace().ops
    mine = [r for r in records if r.name == "add"]
    parts = [r for r in records if r.name == "add part"]
    assert len(mine) == 1 and mine[0].writes[0][2] == 1
    assert len(parts) == eng.options.workers - 1 and all(not p.reads and not p.writes for p in parts)
    assert all(mine[0].start <= p.start for p in parts)  # pushed by the op itself


def test_a_failing_part_fails_the_op_once(eng, small_parts, monkeypatch):
    calls = iter(range(1000))
    lock = threading.Lock()
    real = _cpu.call

    def flaky(entry, block):
        with lock:
            k = next(calls)
        if k == 1:
            raise FloatingPointError("part broke")
        return real(entry, block)

    a = nd.array(np.arange(1000.0))
    eng.wait_all()
    monkeypatch.setattr(_cpu, "call", flaky)
    b = a * 3.0
    c = b + 1.0
    with pytest.raises(FloatingPointError, match="part broke") as info:
        c.wait_to_read()
    assert any("part 2 of" in note for note in info.value.__notes__)
    assert b.var.version == 1 and c.var.version == 1
    eng.wait_all()  # the failure was reported once: nothing left to raise


@pytest.mark.parametrize("numpy_threads", [2, 1])
def test_large_matmuls_equal_numpy(eng, monkeypatch, numpy_threads):
    """Past MATMUL_SPLIT a product is one call of NumPy's BLAS when that runs threads (one op, no
    parts), else row blocks that the workers share (helper ops named "matmul part")."""
    from ops import linalg

    monkeypatch.setattr(_cpu, "MATMUL_SPLIT", 1)
    monkeypatch.setattr(linalg, "numpy_blas_threads", lambda: numpy_threads)
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((300, 70)), rng.standard_normal((70, 50))
    with de.profile() as prof:
        got = (nd.array(x) @ nd.array(y)).asnumpy()
        got_t = (nd.array(y.T.copy()).T @ nd.array(y.T.copy())).asnumpy()  # a transposed view
    np.testing.assert_allclose(got, x @ y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_t, y @ y.T, rtol=1e-12, atol=1e-12)
    names = [r.name for r in prof.trace().ops]
    assert names.count("matmul") == 2 and ("matmul part" in names) == (numpy_threads == 1)
    got32 = (nd.array(x, dtype=np.float32) @ nd.array(y, dtype=np.float32)).asnumpy()
    np.testing.assert_allclose(got32, x.astype(np.float32) @ y.astype(np.float32), rtol=1e-4, atol=1e-4)


def test_layouts_beyond_two_merged_dimensions_use_numpy(eng):
    x = np.arange(120.0).reshape(2, 3, 4, 5)
    got = (nd.array(x).transpose(2, 0, 3, 1) * 2.0 + nd.array(x)[..., ::-1].transpose(2, 0, 3, 1)).asnumpy()
    want = x.transpose(2, 0, 3, 1) * 2.0 + x[..., ::-1].transpose(2, 0, 3, 1)
    np.testing.assert_array_equal(got, want)


def test_exp_matches_libm_at_every_edge():
    special = np.array([0.0, -0.0, 1e-300, -1e-300, 0.5, -0.5, 1.0, 700.0, 709.78, 709.79, 710.0, -708.4,
                        -740.0, -745.13, -745.14, -746.0, np.inf, -np.inf, np.nan])
    x = np.concatenate([special, np.random.default_rng(0).uniform(-745, 709, 100_000)])
    out = np.empty_like(x)
    _cpu.flat("exp", out, x)
    with np.errstate(all="ignore"):
        want = np.exp(x)
    np.testing.assert_allclose(out, want, rtol=1e-15, atol=1e-306)  # a few ulps; subnormals lose bits
    assert np.isnan(out[len(special) - 1]) and out[16] == np.inf and out[17] == 0.0


# ------------------------------------------------------------------ fusion
def _record(eng, x, y, keep_first: bool):
    with eng.record() as g:
        t = x * 2.0
        out = ((t + y) * (x - y)).exp()
    return g, out, (t if keep_first else None), t._data


def test_fusion_drops_unobservable_intermediates(eng):
    rng = np.random.default_rng(1)
    xv, yv = rng.uniform(-1, 1, (40, 30)), rng.uniform(-1, 1, 30)
    x, y = nd.array(xv), nd.array(yv)
    g, out, _, t_memory = _record(eng, x, y, keep_first=False)
    eng.wait_all()
    fused, plain = g.compile(), g.compile(fuse=False)
    assert fused.fused == 4 and len(fused.specs) == 1
    dropped = [s.meta.out._data for s in g.specs[:-1]]  # the memory of the four intermediates
    assert any(m is t_memory for m in dropped) or any(np.shares_memory(m, t_memory) for m in dropped)
    for m in dropped:
        m[...] = -7.0  # dropped: the fused plan must never write them
    x[...] = nd.array(rng.uniform(-1, 1, (40, 30)))
    xv = x.asnumpy()
    versions = [v.version for v in fused.writes]
    fused.run()
    got = out.asnumpy()
    assert all((m == -7.0).all() for m in dropped)
    plain.run()
    want = out.asnumpy()
    np.testing.assert_array_equal(got, want)  # bit for bit: the same scalar code in both
    np.testing.assert_allclose(want, np.exp((xv * 2 + yv) * (xv - yv)), rtol=1e-14)
    assert [v.version for v in fused.writes] == [n + 2 for n in versions]  # both runs count every write


def test_a_kept_intermediate_is_written(eng):
    rng = np.random.default_rng(2)
    x, y = nd.array(rng.uniform(-1, 1, (8, 5))), nd.array(rng.uniform(-1, 1, 5))
    g, out, t, _ = _record(eng, x, y, keep_first=True)
    plan = g.compile()
    assert plan.fused == 4
    x[...] = 3.0
    plan.run()
    np.testing.assert_array_equal(t.asnumpy(), np.full((8, 5), 6.0))
    yv = y.asnumpy()
    want = np.broadcast_to(np.exp((6.0 + yv) * (3.0 - yv)), (8, 5))
    np.testing.assert_allclose(out.asnumpy(), want, rtol=1e-14)


def test_an_intermediate_read_outside_the_group_is_written(eng):
    x = nd.array(np.arange(6.0))
    with eng.record() as g:
        t = x + 1.0
        u = t * 2.0
        s = t.sum()  # a reduction reads t: t is observable inside the plan
        del t
    plan = g.compile()
    x[...] = 10.0
    plan.run()
    assert float(s) == 66.0
    np.testing.assert_array_equal(u.asnumpy(), np.full(6, 22.0))


def test_a_group_is_not_moved_past_a_reader_of_its_members(eng):
    """``max`` reads ``a`` between the two members of a group: the group must not run after it."""
    x = nd.array(np.arange(6.0))
    with eng.record() as g:
        a = x * 2.0
        top = a.max()
        b = a - top
        del a
    plan = g.compile()
    assert plan.fused == 0  # [x * 2] and [a - top] cannot become one kernel at the place of the second
    for k in (3.0, -5.0):
        x[...] = nd.array(np.arange(6.0) * k)
        plan.run()
        want = np.arange(6.0) * k * 2
        np.testing.assert_array_equal(b.asnumpy(), want - want.max())


def test_a_group_is_cut_where_its_members_cannot_move(eng):
    x = nd.array(np.arange(6.0))
    with eng.record() as g:
        h = (x + 1.0) * 3.0      # one kernel
        s = h.sum()              # reads h: the group is cut here
        out = (h - s) * 0.5      # a second kernel
    plan = g.compile()
    assert plan.fused == 2 and len(plan.specs) == 3
    x[...] = 2.0
    plan.run()
    np.testing.assert_array_equal(out.asnumpy(), (np.full(6, 9.0) - 54.0) * 0.5)


def test_a_failed_input_fails_fused_and_unfused_plans_alike(eng):
    x, y = nd.array(np.arange(6.0)), nd.array(np.ones(6))
    with eng.record() as g:
        out = ((x * 2 + y) * (x - y)).exp()
    out.wait_to_read()
    fused, plain = g.compile(), g.compile(fuse=False)
    assert fused.fused == 4 and plain.fused == 0
    for plan in (fused, plain):
        eng.push(lambda ctx: 1 / 0, writes=[x.var], name="breaks x")
        before = out.var.version
        plan.run()
        with pytest.raises(ZeroDivisionError) as info:
            out.wait_to_read()
        assert any("breaks x" in note for note in info.value.__notes__)
        assert out.var.version == before + 1


# ------------------------------------------------------------------ memory
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.timeout(120)  # 100 000 ops on 2 loaded cores
def test_the_pool_bounds_memory_over_100000_temporaries(eng, monkeypatch):
    monkeypatch.setattr(memory, "POOL_MIN", 64 * 1024)
    n = memory.POOL_MIN // 8  # pooled: 64 KiB each, 6.4 GB if none came back
    keep = nd.ones(n)
    before = memory.pool_stats()
    start = _rss_mb()
    for _ in range(100_000):
        keep = keep * 1.0
    keep.wait_to_read()
    grown = _rss_mb() - start
    after = memory.pool_stats()
    assert grown < 200, f"memory grew by {grown:.0f} MB over 100,000 temporaries"
    assert after["hits"] - before["hits"] > 10_000  # buffers really came back and were reused
    assert after["bytes"] <= after["limit"]
    np.testing.assert_array_equal(keep.asnumpy(), np.ones(n))


def test_the_pool_gives_memory_back(eng):
    memory.trim()
    memory.set_pool_limit(64 * 2**20)
    big = [nd.zeros(2**20) for _ in range(24)]  # 24 x 8 MiB
    for b in big:
        b.wait_to_read()
    peak = _rss_mb()
    del big, b
    gc.collect()
    stats = memory.pool_stats()
    assert stats["bytes"] <= 64 * 2**20 and stats["buffers"] == 8
    assert _rss_mb() < peak - 100  # what did not fit was freed
    memory.set_pool_limit(0)
    try:
        assert memory.pool_stats()["bytes"] == 0
        assert _rss_mb() < peak - 150
    finally:
        memory.set_pool_limit(256 * 2**20)


@pytest.mark.parametrize("nbytes", [memory.POOL_MIN, memory.MAP_MIN], ids=["malloc", "mapped"])
def test_an_exported_buffer_is_never_reused(eng, nbytes):
    a = nd.full((nbytes // 8,), 5.0)
    view = np.from_dlpack(a)  # NumPy now shares a's memory
    del a
    gc.collect()
    others = [nd.full((nbytes // 8,), -1.0) for _ in range(4)]
    for o in others:
        o.wait_to_read()
    assert (view == 5.0).all()


def test_no_release_op_is_pushed_for_cpu_temporaries(eng):
    a = nd.ones(10)
    (a + 1).wait_to_read()
    eng.wait_all()
    seq = eng._seq
    for _ in range(50):
        a = a + 1.0
    a.wait_to_read()
    assert eng._seq == seq + 50  # one op per operation, no delete ops


# ------------------------------------------------------------ kernel cache
_PROGRAM = textwrap.dedent("""
    import json, numpy as np, depengine as de, ops as nd
    from ops._kernels import kernel_events
    x = nd.array(np.random.default_rng(0).random((64, 64)))
    y = nd.array(np.random.default_rng(1).random(64))
    for dt in (np.float64, np.float32, np.int64):
        v = x.astype(dt)
        (v + 1, v * v, v[:, ::2] - 2, v.T + v, v < v, -v, abs(v))
    ((x * 2 + y) * (x - y)).exp().sum(axis=0).asnumpy()
    (x @ x).max().asnumpy()
    (x.sum(), x.astype(np.float32).mean())
    nd.random.uniform(shape=(5,)).asnumpy()
    from bench.cholesky_demo import spd_matrix
    nd.linalg.cholesky(nd.array(spd_matrix(64)), tile=32).asnumpy()
    nd.stencil.heat2d(nd.array(np.ones((16, 16))), 2, tile=8).asnumpy()
    eng = nd.engine()
    with eng.record() as g:
        out = ((x * 2 + y) * (x - y)).exp()
    g.compile().run()
    out.asnumpy()
    print(json.dumps(kernel_events()))
""")


@pytest.mark.timeout(300)  # the first start compiles every kernel the program uses
def test_every_kernel_comes_from_the_cache_on_the_second_start(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def start():
        done = subprocess.run([sys.executable, "-c", _PROGRAM], env=env, cwd=root, capture_output=True,
                              text=True, timeout=280)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = start()
    assert "compiled" in first.values()
    second = start()
    assert set(second) == set(first)
    compiled = [name for name, how in second.items() if how != "cached"]
    assert not compiled, f"compiled again on the second start: {compiled}"
    kinds = {name.split("_")[1] if name.startswith("_") else name.split("(")[0] for name in second}
    expected = {"ew", "fused", "fill_random", "_potrf", "_gemm_cfunc", "_sum_f64", "_sum_f32", "_tile_step"}
    assert expected <= kinds | {n.split("(")[0] for n in second}


# --------------------------------------------------------------- bad input
def test_bad_input_raises_before_anything_is_pushed(eng):
    a = nd.ones((2, 3))
    i32 = nd.ones(3, dtype=np.int32)
    eng.wait_all()
    seq = eng._seq
    with pytest.raises(OverflowError):
        i32 + 2**40
    with pytest.raises(ValueError, match=r"could not be broadcast together with shapes \(2, 3\) \(3, 2\)"):
        a * a.T
    with pytest.raises(TypeError, match=r"(?s)out=.* must be an NDArray"):
        nd.add(a, 1.0, out=np.zeros((2, 3)))
    with pytest.raises(TypeError, match="cannot cast the float64 result"):
        nd.add(i32, 0.5, out=i32)
    with pytest.raises(ValueError, match="does not fit out of shape"):
        nd.add(a, a, out=nd.ones(3))
    with pytest.raises(ValueError, match="set_pool_limit"):
        memory.set_pool_limit(-1)
    assert eng._seq == seq + 1  # only nd.ones(3) above was pushed
    assert _kernels.CALLS in ("C", "ctypes")


def test_contiguous_kernels_vectorise():
    """The one-row add and exp kernels compile to packed AVX arithmetic (checked in the assembly)."""
    import numba

    for op, packed in (("add", "vaddpd"), ("exp", "vmulpd")):
        f64 = np.dtype(np.float64)
        setup, rows, _ = _kernels.row_loads("o", 3, "C", f64, f64)
        body = []
        for i, var in enumerate("xy"[: 2 if op == "add" else 1]):
            s, r, elem = _kernels.row_loads(f"a{i}", 6 + 3 * i, "C", f64, f64)
            setup, rows = setup + s, rows + r
            body.append(f"{var} = {elem}")
        body.append(f"o[m] = {_kernels.expression(op, f64)}")
        source = _kernels.kernel_source("_probe", 12, setup, rows, body)
        ns = dict(_kernels.NAMESPACE)
        exec(source, ns)
        asm = numba.cfunc(_kernels._SIG, nogil=True, error_model="numpy")(ns["_probe"])._library.get_asm_str()
        lines = [line for line in asm.splitlines() if packed in line]
        assert any("%ymm" in line or "%zmm" in line for line in lines), f"{op}: no packed {packed}"


def test_one_part_kernels_are_native_bodies_on_the_compiled_core_and_replay_in_c(eng):
    """On the compiled core an elementwise op's body is a de.native body (no GIL to run it), so a
    recorded plan of them replays in C; on the Python core it is a Python body.  Both give NumPy's."""
    compiled = eng.options.core == "compiled"
    a, b = nd.array(np.arange(10.0)), nd.array(np.full(10, 0.5))
    fn, _ = _cpu.elementwise(eng, "add", np.dtype(np.float64), nd.zeros(10), (a, b))
    assert isinstance(fn, NATIVE_TYPES) == compiled
    with eng.record() as g:
        d = (a + b) * 2.0
    plan = g.compile(fuse=False)
    assert (plan.native is not None) == compiled
    np.testing.assert_array_equal(d.asnumpy(), (np.arange(10.0) + 0.5) * 2)
    a[:] = nd.array(np.full(10, 3.0))
    plan.run()
    np.testing.assert_array_equal(d.asnumpy(), np.full(10, 7.0))
