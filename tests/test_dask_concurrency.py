"""depengine.dask.get: workers, nested computes, context, Ctrl-C, memory release, order, priorities."""

from __future__ import annotations

import contextvars
import gc
import signal
import threading
import weakref

import pytest

pytest.importorskip("dask")

import dask
from dask.callbacks import Callback
from dask.utils_test import inc

import depengine as de
import depengine.dask as dd

WAIT = 10  # seconds any event or barrier may take before the test fails


pytestmark = pytest.mark.usefixtures("dask_bridge")  # the bridge's engines: see conftest


def _meet(barrier):
    barrier.wait(WAIT)
    return threading.get_ident()


@pytest.mark.parametrize("workers", [1, 3])
def test_num_workers_argument_and_config(workers):
    barrier = threading.Barrier(workers)
    dsk = {("t", i): (_meet, barrier) for i in range(workers)}
    idents = dd.get(dsk, list(dsk), num_workers=workers)  # all of them meet: that many threads
    assert len(set(idents)) == workers
    barrier.reset()
    with dask.config.set(num_workers=workers):
        assert len(set(dd.get(dsk, list(dsk)))) == workers


def test_depengine_engine_picks_the_kind_of_the_bridge_engines(monkeypatch):
    dsk = {"t": (threading.get_ident,)}
    assert dd.get(dsk, "t") != threading.get_ident()  # threaded by default
    dd.shutdown()
    monkeypatch.setenv("DEPENGINE_ENGINE", "naive")
    assert dd.get(dsk, "t") == threading.get_ident()  # the naive engine runs it right here


def test_contextvars_of_the_caller_are_visible_in_tasks():
    var = contextvars.ContextVar("var", default=42)
    dsk = {"x": (var.get,)}
    dd.get({"warm": (inc, 1)}, "warm")  # the engine's threads exist before the variable is set
    assert dd.get(dsk, "x") == 42
    token = var.set(43)
    try:
        assert dd.get(dsk, "x") == 43
    finally:
        var.reset(token)
    assert dd.get(dsk, "x") == 42


def test_nested_compute_gets_its_own_workers():
    # Both outer tasks block inside nested computes whose two tasks must run at once:
    # neither a deadlock (waiting on the engine that runs the caller) nor starved workers.
    def nested(i):
        barrier = threading.Barrier(2)
        inner = dask.delayed(_meet)(barrier), dask.delayed(_meet)(barrier)
        return len(set(dask.compute(*inner, scheduler="depengine", num_workers=2))) + i

    assert dd.get({"a": (nested, 0), "b": (nested, 10)}, ["a", "b"], num_workers=2) == (2, 12)


def test_nested_compute_on_an_explicit_engine_does_not_wait_on_itself():
    with de.Engine("threaded", workers=1) as eng:
        def nested(x):
            return dd.get({"y": (inc, x)}, "y", engine=eng)

        assert dd.get({"x": 1, "z": (nested, "x")}, "z", engine=eng) == 2
    with de.Engine("naive") as naive:  # the naive engine simply runs it inline
        def inline(x):
            return dd.get({"y": (inc, x)}, "y", engine=naive)

        assert dd.get({"x": 1, "z": (inline, "x")}, "z", engine=naive) == 2


def test_many_threads_compute_at_once():
    gate = threading.Event()

    def slow(x):
        gate.wait(WAIT)
        return x + 1

    dsk = {"x": 1, "y": (slow, "x"), "z": (inc, "y")}
    results = []
    threads = [threading.Thread(target=lambda: results.append(dd.get(dsk, "z"))) for _ in range(12)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(WAIT)
    assert results == [3] * 12


# ------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_stops_the_compute_promptly_and_the_engine_stays_usable():
    main = threading.get_ident()
    release, block_started, finished = threading.Event(), threading.Event(), threading.Event()
    started, flags = [], []

    def block():
        started.append("block")
        block_started.set()
        release.wait(WAIT)

    def interrupt(_):
        block_started.wait(WAIT)
        signal.pthread_kill(main, signal.SIGINT)
        finished.wait(WAIT)  # both workers stay busy until the caller has given up

    def never(_):
        started.append("never")

    def finish(dsk, state, errored):
        flags.append(errored)
        finished.set()

    dsk = {"b": (block,), "i": (interrupt, "b0"), "b0": (inc, 0)}
    dsk.update({("late", k): (never, "i") for k in range(20)})
    with Callback(finish=finish), pytest.raises(KeyboardInterrupt):
        dd.get(dsk, ["b", *[("late", k) for k in range(20)]], num_workers=2)
    assert flags == [True]
    release.set()
    assert dd.get({"x": (inc, 1)}, "x", num_workers=2) == 2  # same engine, next compute
    assert started == ["block"]  # the tasks left when Ctrl-C came never started


def test_ctrl_c_while_tasks_are_pushed_stops_at_once():
    main = threading.get_ident()
    ran = []

    def task(i):
        ran.append(i)
        if i == 10:
            signal.pthread_kill(main, signal.SIGINT)  # arrives while the naive engine pushes

    dsk = {("t", i): (task, i) for i in range(100)}
    with de.Engine("naive") as eng:
        with pytest.raises(KeyboardInterrupt):
            dd.get(dsk, list(dsk), engine=eng)
        assert len(ran) <= 12  # the handler ran right after task 10; nothing much after
        assert dd.get({"x": (inc, 1)}, "x", engine=eng) == 2


# ----------------------------------------------------------- memory release
class Big:
    """A value that knows which values of its kind are still alive."""

    live: set = set()

    def __init__(self, i):
        self.i = i
        Big.live.add(i)
        weakref.finalize(self, Big.live.discard, i)


def test_a_result_is_released_as_soon_as_its_last_reader_ran():
    Big.live.clear()
    seen = {}

    def step(prev, i):
        gc.collect()  # only references can keep a value alive now
        seen[i] = sorted(Big.live)
        return Big(i)

    n = 12
    dsk = {("s", 0): (Big, 0), "keep": (lambda s: s.i, ("s", 5))}  # a second reader of step 5
    dsk.update({("s", i): (step, ("s", i - 1), i) for i in range(1, n)})
    last, kept = dd.get(dsk, [("s", n - 1), "keep"], num_workers=1)  # "keep" runs last
    assert (last.i, kept) == (n - 1, 5)
    for i in range(1, n):
        assert seen[i] == sorted({i - 1} | ({5} if i > 5 else set())), (i, seen[i])
    gc.collect()
    assert Big.live == {n - 1}  # step 5 went once "keep" had read it


def test_a_compute_leaves_nothing_for_the_garbage_collector():
    # values go as soon as nobody holds them: no reference cycle keeps a node (and its value) alive
    Big.live.clear()
    was_on = gc.isenabled()
    gc.disable()
    try:
        dsk = {"a": (Big, 1), "b": "a", "c": (lambda a: Big(a.i + 1), "b")}
        with de.Engine("naive") as eng:  # every op has completed when get returns
            c = dd.get(dsk, "c", engine=eng)
        assert Big.live == {2} and c.i == 2
        del c
        assert Big.live == set()
    finally:
        if was_on:
            gc.enable()


def _chunk(block_id=None):
    import numpy as np

    a = np.ones(125_000)  # 1 MB
    ident = id(a)
    _chunk.live.add(ident)
    _chunk.peak = max(_chunk.peak, len(_chunk.live))
    weakref.finalize(a, _chunk.live.discard, ident)
    return a


_chunk.live = set()
_chunk.peak = 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_reduction_over_more_data_than_allowed_streams(workers):
    # 600 chunks of 1 MB go through one sum; at no time may more than 12 chunks (12 MB) live.
    np = pytest.importorskip("numpy")
    da = pytest.importorskip("dask.array")
    _chunk.live.clear()
    _chunk.peak = 0
    x = da.map_blocks(_chunk, chunks=((125_000,) * 600,), dtype=float, meta=np.array((), float))
    total = x.sum().compute(scheduler="depengine", num_workers=workers, optimize_graph=False)
    assert total == 600 * 125_000
    assert _chunk.peak <= 6 * workers, _chunk.peak


_CAPPED = """
import resource, numpy as np, dask.array as da, depengine.dask as dd
dd.get({"warm": 1}, "warm", num_workers=2)  # threads and their stacks exist before the cap
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 300 * 2**20, resource.RLIM_INFINITY))
try:
    np.ones(400 * 2**20 // 8)  # the cap is real: 400 MB at once do not fit
    raise SystemExit("the address space cap did not hold")
except MemoryError:
    pass
x = da.map_blocks(lambda block_id=None: np.ones(2**17), chunks=((2**17,) * 1500,), dtype=float,
                  meta=np.array((), float))
print(x.sum().compute(scheduler="depengine", num_workers=2, optimize_graph=False))
"""


def test_a_reduction_over_more_data_than_the_process_may_hold():
    # 1.5 GB of chunks through one sum, in a process capped at 300 MB more than it had
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _CAPPED], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout) == 1500 * 2**17


# --------------------------------------------------------------- ordering
def _order_of(dsk, keys, **kwargs):
    order = []
    with Callback(pretask=lambda key, d, state: order.append(key)):
        dd.get(dsk, keys, num_workers=1, **kwargs)
    return order


def test_depth_first_and_the_critical_path_first():
    # a long chain and short independent tasks, all feeding "out": with one worker the chain
    # (the critical path) starts first, and each pair (a_i, b_i) is reduced as soon as it exists
    dsk = {("c", 0): (inc, 0), "out": (lambda *a: len(a), ("c", 9), *[("p", i) for i in range(4)])}
    dsk.update({("c", i): (inc, ("c", i - 1)) for i in range(1, 10)})
    for i in range(4):
        dsk[("a", i)] = (inc, i)
        dsk[("b", i)] = (inc, i)
        dsk[("p", i)] = (lambda a, b: a + b, ("a", i), ("b", i))
    order = _order_of(dsk, "out")
    assert order[:10] == [("c", i) for i in range(10)]
    assert order[10:-1] == [k for i in range(4) for k in (("a", i), ("b", i), ("p", i))]


def test_priority_annotations_run_first_and_lift_their_inputs():
    shared = dask.delayed(inc)(0, dask_key_name="shared")
    low = [dask.delayed(inc)(i, dask_key_name=f"low{i}") for i in range(3)]
    with dask.annotate(priority=5):
        high = dask.delayed(lambda a, b: a + b)(shared, 1, dask_key_name="high")
    order = []
    with Callback(pretask=lambda key, d, state: order.append(key)):
        dask.compute(*low, high, scheduler="depengine", num_workers=1)
    assert order[:2] == ["shared", "high"]  # "shared" inherits the priority of the task that needs it


def test_bad_priority_annotation_is_refused_before_anything_runs():
    ran = []
    with dask.annotate(priority=lambda key: "high"):  # dask checks plain values, not these
        x = dask.delayed(ran.append)(1)
    with pytest.raises(TypeError, match=r"priority annotation 'high' of key .* must be a number"):
        x.compute(scheduler="depengine")
    assert ran == []


def test_a_forked_child_computes_on_engines_of_its_own():
    import os

    assert dd.get({"x": (inc, 1)}, "x") == 2  # the parent's shared engine exists
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        try:
            ok = dd.get({"x": (inc, 41)}, "x") == 42
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert dd.get({"x": (inc, 2)}, "x") == 3
