"""Native op bodies (de.native): ordering, failures, lifetimes, bad input, and GIL-freedom on the core."""

from __future__ import annotations

import ctypes
import gc
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import numba
import numpy as np
import pytest
from numba import types

import depengine as de
from depengine import _compiled
from tests.cfuncs import to_ptr
from tests.conftest import ENGINE_CONFIGS, config_id

CORES = ["python"] + (["compiled"] if _compiled.COMPILED_AVAILABLE else [])


@numba.cfunc(types.int32(types.voidptr), nogil=True)
def scale(p):
    a = numba.carray(p, (1024,), dtype=np.float64)
    for i in range(a.shape[0]):
        a[i] *= 2.0
    return 0


@numba.cfunc(types.int32(types.voidptr), nogil=True)
def step(p):
    """data[d] = data[s1] + data[s2] + c, or return the code c when c < 0 (d: [data, d, s1, s2, c])."""
    d = numba.carray(p, (5,), dtype=np.int64)
    if d[4] < 0:
        return d[4]
    data = numba.carray(to_ptr(d[0]), (64,), dtype=np.int64)
    data[d[1]] = data[d[2]] + data[d[3]] + d[4]
    return 0


@numba.cfunc(types.int32(types.voidptr), nogil=True)
def bump(p):
    a = numba.carray(p, (1,), dtype=np.int64)
    a[0] += 1
    return 0


@numba.cfunc(types.float64(types.voidptr), nogil=True)
def wrong_signature(p):
    return 0.0


def test_the_issue_example_runs_native_ops_in_order_then_a_python_op():
    buf = np.ones(1024)
    seen = []
    with de.Engine("threaded", workers=2) as eng:
        v = eng.new_var("buf")
        for _ in range(1000):
            eng.push(de.native(scale, buf), writes=[v], name="scale")
        eng.push(lambda ctx: seen.append(buf[:3].copy()), reads=[v])
        eng.wait_all()
        assert v.version == 1000
    assert np.array_equal(seen[0], np.full(3, 2.0 ** 1000))


@pytest.mark.parametrize("fn_form", ["cfunc", "ctypes", "address"])
def test_every_form_of_function(fn_form):
    proto = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)
    fn = {"cfunc": bump, "ctypes": proto(bump.address), "address": bump.address}[fn_form]
    counter = np.zeros(1, np.int64)
    with de.Engine() as eng:
        v = eng.new_var("n")
        for _ in range(10):
            eng.push(de.native(fn, counter), writes=[v])
        eng.push(de.native(fn, counter.ctypes.data), writes=[v])  # an integer address as the argument
        eng.wait_for_var(v)
    assert counter[0] == 11


# ---------------------------------------------------------------- random programs
def _program(seed: int, nvars: int = 6, nops: int = 120):
    rng = random.Random(seed)
    ops = []
    for _ in range(nops):
        dst = rng.randrange(nvars)
        s1, s2 = rng.randrange(nvars), rng.randrange(nvars)
        ops.append(("native" if rng.random() < 0.6 else "python", dst, s1, s2, rng.randrange(1, 9)))
    return ops


def _serial(ops, nvars):
    data = list(range(nvars))
    for _, dst, s1, s2, c in ops:
        data[dst] = data[s1] + data[s2] + c
    return data


# (core, body form): "cheap" bodies carry make_native's inline flag (the compiled core's), run by the
# push that finds them ready
FORMS = [(core, "native") for core in CORES] + [("compiled", "cheap")] * _compiled.COMPILED_AVAILABLE


@pytest.mark.parametrize(("core", "form"), FORMS, ids=[f"{c}-{f}" for c, f in FORMS])
@pytest.mark.parametrize("config", ENGINE_CONFIGS, ids=config_id)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_native_and_python_ops_mixed_give_the_serial_result(core, form, config, seed):
    kind, workers = config
    nvars = 6
    ops = _program(seed, nvars)
    data = np.zeros(64, np.int64)
    data[:nvars] = np.arange(nvars)
    blocks = []
    with de.Engine(kind, workers=workers, core=core) as eng:
        vs = [eng.new_var(f"x{i}") for i in range(nvars)]
        for how, dst, s1, s2, c in ops:
            reads = [vs[s1], vs[s2]]
            if how == "native":
                block = np.array([data.ctypes.data, dst, s1, s2, c], np.int64)
                blocks.append(block)
                body = de.native(step, block) if form == "native" else _cheap(step, block)
                eng.push(body, reads=reads, writes=[vs[dst]])
            else:
                def body(ctx, dst=dst, s1=s1, s2=s2, c=c):
                    data[dst] = data[s1] + data[s2] + c
                eng.push(body, reads=reads, writes=[vs[dst]])
        eng.wait_all()
        versions = [v.version for v in vs]
    assert list(data[:nvars]) == _serial(ops, nvars), f"seed={seed}"
    assert versions == [sum(1 for op in ops if op[1] == i) for i in range(nvars)]


# ---------------------------------------------------------------- failures
@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("kind", ["naive", "threaded", "perdevice"])
def test_a_non_zero_return_fails_the_op_and_skips_its_dependents(core, kind):
    data = np.zeros(64, np.int64)
    ran = []
    with de.Engine(kind, workers=2, core=core) as eng:
        a, b, c = eng.new_var("a"), eng.new_var("b"), eng.new_var("c")
        bad = np.array([data.ctypes.data, 0, 0, 0, -7], np.int64)
        op = eng.push(de.native(step, bad), writes=[a], name="bad")
        later = eng.push(de.native(step, np.array([data.ctypes.data, 1, 0, 0, 5], np.int64)), reads=[a],
                         writes=[b], name="later")
        eng.push(lambda ctx: ran.append("always"), reads=[a], writes=[c], always_run=True)
        with pytest.raises(de.NativeError) as info:
            eng.wait_for_var(a)
        assert info.value.code == -7
        assert any("'bad'" in note for note in info.value.__notes__)
        with pytest.raises(de.NativeError):
            eng.wait_for_var(b)  # the skipped dependent inherited the failure
        eng.wait_all()
        assert (op.state, later.state) == ("failed", "skipped")
        assert ran == ["always"] and not c.failed and data[1] == 0
        assert (a.version, b.version, c.version) == (1, 1, 1)


@pytest.mark.parametrize("core", CORES)
def test_the_argument_lives_until_its_op_ran_and_no_longer(core):
    gate = threading.Event()
    with de.Engine("threaded", workers=2, core=core) as eng:
        v = eng.new_var("v")
        eng.push(lambda ctx: gate.wait(10), writes=[v])
        arr = np.zeros(1, np.int64)
        alive = weakref.ref(arr)
        eng.push(de.native(bump, arr), writes=[v])
        del arr
        gc.collect()
        assert alive() is not None  # the op holds it while it waits
        gate.set()
        eng.wait_all()
        gc.collect()
        assert alive() is None


def test_bad_input_is_refused_at_native_and_nothing_is_pushed():
    with de.Engine() as eng:
        v = eng.new_var("v")
        with pytest.raises(TypeError, match="not a C function"):
            de.native(lambda p: 0)
        with pytest.raises(TypeError, match=r"signature \(void\*,\) -> float64; expected int32\(voidptr\)"):
            de.native(wrong_signature)
        bad_proto = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_void_p)(bump.address)
        with pytest.raises(TypeError, match="expected c_int32"):
            de.native(bad_proto)
        with pytest.raises(TypeError, match="neither None, an integer address, nor an object exporting"):
            de.native(bump, "text")
        with pytest.raises(ValueError, match="not contiguous"):
            de.native(bump, np.zeros((4, 4))[:, 1])
        for address in (0, -5):
            with pytest.raises(ValueError, match="positive"):
                de.native(address)
        with pytest.raises(ValueError, match="argument address -1"):
            de.native(bump, -1)
        with pytest.raises(TypeError, match="Native cannot be created directly"):
            type(de.native(bump))()
        assert v.version == 0 and v._state()["pending_writes"] == 0


@pytest.mark.parametrize("core", CORES)
def test_push_async_refuses_a_native_body_and_pushes_nothing(core):
    """A native body cannot call done(): refused at push_async (it would never complete)."""
    counter = np.zeros(1, np.int64)
    with de.Engine("threaded", workers=2, core=core) as eng:
        v = eng.new_var("v")
        eng.push(de.native(bump, counter), writes=[v])
        with pytest.raises(TypeError, match="native body, which cannot call done"):
            eng.push_async(de.native(bump, counter), writes=[v])
        eng.wait_for_var(v, timeout=10)
        assert v.version == 1 and counter[0] == 1 and v._state()["pending_writes"] == 0


def test_a_failing_native_body_on_a_python_engine_first_raises_native_error():
    """In a fresh process whose first engine is a Python one, a non-zero return still gives
    NativeError (the core knew its error types only once a compiled engine had been made)."""
    code = textwrap.dedent("""
        import numpy as np, depengine as de
        from tests.test_native import step
        with de.Engine("threaded", workers=2, core="python") as eng:
            v = eng.new_var("v")
            eng.push(de.native(step, np.array([0, 0, 0, 0, -9], np.int64)), writes=[v], name="bad")
            try:
                eng.wait_for_var(v, timeout=10)
            except de.NativeError as exc:
                print("code", exc.code)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and out.stdout.split() == ["code", "-9"], out.stdout + out.stderr[-3000:]


# ---------------------------------------------------------------- the compiled core without the GIL
@pytest.mark.skipif(not _compiled.COMPILED_AVAILABLE, reason="depengine._core is not built")
def test_native_ops_progress_while_the_pushing_thread_holds_the_gil():
    counter = np.zeros(1, np.int64)
    n = 2000
    interval = sys.getswitchinterval()
    with de.Engine("threaded", workers=2, core="compiled") as eng:
        v = eng.new_var("n")
        body = de.native(bump, counter)
        for _ in range(n):
            eng.push(body, writes=[v])
        sys.setswitchinterval(1000.0)  # this thread keeps the GIL for as long as it runs bytecode
        try:
            deadline = time.monotonic() + 20
            while counter[0] < n and time.monotonic() < deadline:
                pass  # pure bytecode: never releases the GIL
            reached = int(counter[0])
        finally:
            sys.setswitchinterval(interval)
        eng.wait_all()
    assert reached == n, f"only {reached} of {n} native ops ran while the pusher held the GIL"


@pytest.mark.timeout(400)
@pytest.mark.skipif(bool(os.environ.get("DEPENGINE_PURE_PYTHON")),
                    reason="runs both cores explicitly in the default pass of the suite")
@pytest.mark.parametrize("core", CORES)
def test_a_million_ops_from_four_threads_keep_memory_bounded_and_versions_exact(core, monkeypatch):
    monkeypatch.delenv("DEPENGINE_DEBUG", raising=False)  # its checks walk each var's queue: O(n) per op
    per_thread = 250_000
    counters = [np.zeros(1, np.int64) for _ in range(4)]
    with de.Engine("threaded", workers=2, core=core) as eng:
        vs = [eng.new_var(f"v{t}") for t in range(4)]
        shared = eng.new_var("shared")
        barrier = threading.Barrier(4)
        rss = []

        def pusher(t):
            body = de.native(bump, counters[t])
            barrier.wait()
            for k in range(per_thread):
                eng.push(body, reads=[shared] if k % 64 else [], writes=[vs[t]])
                if t == 0 and k % 50_000 == 0:
                    rss.append(_rss_mb())

        threads = [threading.Thread(target=pusher, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        eng.wait_all()
        versions = [v.version for v in vs]
    assert versions == [per_thread] * 4 and [int(c[0]) for c in counters] == [per_thread] * 4
    assert max(rss) - rss[0] < 300, f"memory grew by {max(rss) - rss[0]:.0f} MB while pushing: {rss}"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.parametrize("core", CORES)
def test_native_ops_are_profiled_like_any_op(core):
    counter = np.zeros(1, np.int64)
    data = np.zeros(64, np.int64)
    with de.profile() as prof, de.Engine("threaded", workers=2, core=core) as eng:
        a, b = eng.new_var("a"), eng.new_var("b")
        for _ in range(50):
            eng.push(de.native(bump, counter), writes=[a], name="bump")
        eng.push(de.native(step, np.array([data.ctypes.data, 1, 0, 0, 3], np.int64)), reads=[a], writes=[b])
        eng.push(de.native(step, np.array([data.ctypes.data, 0, 0, 0, -2], np.int64)), writes=[b], name="bad")
        with pytest.raises(de.NativeError):
            eng.wait_all()
    ops = prof.trace().ops
    assert [r.name for r in ops] == ["bump"] * 50 + ["step", "bad"]
    assert [r.writes[0][2] for r in ops[:50]] == list(range(1, 51))  # the version each write made
    assert ops[50].reads == [(a.serial, "a", 50)] and ops[50].writes == [(b.serial, "b", 1)]
    assert ops[51].state == "failed" and "NativeError" in ops[51].error
    assert all(r.start >= r.push and r.end >= r.start for r in ops)
    assert {r.lane for r in ops[:50]} <= {t.name for t in eng.threads()}


# ---------------------------------------------------------- cheap ops run where they are pushed
def _cheap(fn, values, name="cheap"):
    """A native body flagged cheap (make_native's inline): a push that finds it ready runs it at once."""
    return _compiled.core_module.make_native(fn.address, None, name, np.array(values, np.int64).tobytes(),
                                               True)


needs_core = pytest.mark.skipif(not _compiled.COMPILED_AVAILABLE, reason="the compiled core is not built")


@needs_core
@pytest.mark.parametrize("kind", ["threaded", "perdevice"])
def test_a_cheap_op_found_ready_runs_on_the_pushing_thread_and_one_that_waits_on_a_worker(kind):
    data = np.zeros(64, np.int64)
    gate = threading.Event()
    with de.profile() as prof, de.Engine(kind, workers=2, core="compiled") as eng:
        x, y = eng.new_var("x"), eng.new_var("y")
        eng.push(lambda ctx: gate.wait(10), writes=[x], name="gate")
        eng.push(_cheap(step, [data.ctypes.data, 1, 0, 0, 3], "waits"), reads=[x], writes=[x])
        eng.push(_cheap(step, [data.ctypes.data, 2, 0, 0, 5], "ready"), writes=[y])
        assert data[2] == 5 and data[1] == 0  # the ready one ran inside its push; the other waits
        gate.set()
        eng.wait_all()
        workers = {t.name for t in eng.threads()}
    lanes = {r.name: r.lane for r in prof.trace().ops}
    assert lanes["ready"] == threading.current_thread().name
    assert lanes["waits"] in workers and data[1] == 3


@needs_core
def test_a_failing_cheap_op_fails_at_once_and_skips_its_dependents():
    data = np.zeros(64, np.int64)
    with de.Engine("threaded", workers=2, core="compiled") as eng:
        a, b = eng.new_var("a"), eng.new_var("b")
        bad = eng.push(_cheap(step, [data.ctypes.data, 0, 0, 0, -7], "bad"), writes=[a])
        assert bad.state == "failed"  # ran (and failed) inside its push
        later = eng.push(_cheap(step, [data.ctypes.data, 1, 0, 0, 5], "later"), reads=[a], writes=[b])
        with pytest.raises(de.NativeError) as info:
            eng.wait_for_var(b)
        assert info.value.code == -7
        eng.wait_all()
        assert later.state == "skipped" and data[1] == 0


def _native_gate():
    """A native body that blocks its worker, without the GIL, until ``open()``: libc's ``sem_wait``."""
    libc = ctypes.CDLL(None, use_errno=True)
    sem = ctypes.create_string_buffer(64)  # (a sem_t is 32 bytes on x86-64 Linux)
    if libc.sem_init(sem, 0, 0) != 0:
        pytest.skip(f"sem_init failed: errno {ctypes.get_errno()}")
    body = de.native(ctypes.cast(libc.sem_wait, ctypes.c_void_p).value, sem)
    return body, lambda: libc.sem_post(sem)


@needs_core
@pytest.mark.parametrize("body", ["native", "python"])
def test_drain_with_a_wait_returns_when_an_op_finishes(body):
    """A pusher waiting for buffers sleeps in ``drain(wait)`` until one of the engine's ops finishes,
    not for the whole wait: the 30 s wait below must end as soon as the gated op has run.  The
    native gate finishes without the GIL (the native completion path wakes the wait)."""
    gate = threading.Event()
    with de.Engine("threaded", workers=1, core="compiled") as eng:
        x = eng.new_var("x")
        if body == "native":
            fn, open_gate = _native_gate()
        else:
            fn, open_gate = (lambda ctx: gate.wait(10)), gate.set
        eng.push(fn, writes=[x], name="gate")
        out = []
        t = threading.Thread(target=lambda: out.append(eng._drain_records(30.0)))
        try:
            t.start()
            while not eng._core.drain_waiters and t.is_alive():  # asleep in C (or already back)
                time.sleep(0)
        finally:
            open_gate()  # (never leave a worker blocked: closing the engine would wait for it)
        t.join(10)
        assert not t.is_alive(), "drain(30.0) slept through the op that finished"
        assert out == [True] and eng._core.drain_waiters == 0
        eng.wait_all()
        assert eng._drain_records() is True


@pytest.mark.parametrize("core", CORES)
def test_drain_with_a_wait_on_an_idle_engine_returns_false_at_once(core):
    """No op pending: none will give a buffer back, so a waiting pusher must not wait at all."""
    with de.Engine("threaded", workers=1, core=core) as eng:
        out = []
        t = threading.Thread(target=lambda: out.append(eng._drain_records(30.0)))
        t.start()
        t.join(10)
        assert not t.is_alive() and out == [False]
        if core == "python":  # pending ops: it cannot wait for them in C, and says so
            gate = threading.Event()
            eng.push(lambda ctx: gate.wait(10), writes=[eng.new_var("x")])
            assert eng._drain_records(30.0) is None
            gate.set()


@needs_core
def test_drain_refuses_a_bad_wait():
    with de.Engine("threaded", workers=1, core="compiled") as eng:
        for bad, err in [(-1.0, ValueError), (float("nan"), ValueError), (1e9, ValueError), ("1", TypeError)]:
            with pytest.raises(err, match="drain" if err is ValueError else ""):
                eng._core.drain(bad)
        with pytest.raises(TypeError, match="at most one"):
            eng._core.drain(0.0, 1.0)
