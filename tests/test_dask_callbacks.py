"""depengine.dask.get under dask's callbacks and diagnostics, the cache, and depengine's profiler."""

from __future__ import annotations

import io
import threading

import pytest

pytest.importorskip("dask")

import dask
from dask.callbacks import Callback
from dask.diagnostics import CacheProfiler, Profiler, ProgressBar, ResourceProfiler
from dask.utils_test import add, inc

import depengine as de
import depengine.dask as dd

STATE_KEYS = {"dependencies", "dependents", "waiting", "waiting_data", "cache", "ready", "running",
              "finished", "released"}


pytestmark = pytest.mark.usefixtures("dask_bridge")  # the bridge's engines: see conftest


def _diamond():
    return {"x": 1, "y": (inc, "x"), "z": (inc, "x"), "w": (add, "y", "z")}


def test_callbacks_see_dask_local_state_at_every_step():
    calls = []
    lock = threading.Lock()
    main = threading.get_ident()

    def start(dsk):
        calls.append(("start", sorted(dsk)))

    def start_state(dsk, state):
        assert set(state) == STATE_KEYS
        assert state["dependencies"] == {"y": {"x"}, "z": {"x"}, "w": {"y", "z"}}
        assert state["cache"] == {"x": 1} and sorted(state["ready"]) == ["y", "z"]
        assert state["waiting"] == {"w": {"y", "z"}}
        calls.append(("start_state",))

    def pretask(key, dsk, state):
        assert key in state["running"] and key not in state["ready"] and key not in state["waiting"]
        with lock:
            calls.append(("pretask", key))

    def posttask(key, result, dsk, state, worker_id):
        assert key in state["finished"] and state["cache"][key] == result
        assert worker_id == threading.get_ident() != main  # a worker of the engine ran it
        with lock:
            calls.append(("posttask", key, result))

    def finish(dsk, state, errored):
        assert state["finished"] == {"y", "z", "w"} and not state["running"] and not state["waiting"]
        assert state["released"] >= {"y", "z"} and "w" in state["cache"]
        calls.append(("finish", errored))

    with Callback(start, start_state, pretask, posttask, finish):
        assert dd.get(_diamond(), "w") == 4
    assert calls[0] == ("start", ["w", "x", "y", "z"]) and calls[1] == ("start_state",)
    assert calls[-1] == ("finish", False)
    middle = calls[2:-1]
    assert sorted(c[1] for c in middle if c[0] == "pretask") == ["w", "y", "z"]
    assert ("posttask", "w", 4) in middle
    assert middle.index(("pretask", "w")) > max(middle.index(("posttask", k, 2)) for k in "yz")


def test_callbacks_passed_as_an_argument_replace_the_active_ones():
    seen, active = [], []
    with Callback(pretask=lambda key, dsk, state: active.append(key)):
        as_tuple = (None, None, lambda key, dsk, state: seen.append(key), None, None)
        dd.get(_diamond(), "w", callbacks=[as_tuple])
        dd.get(_diamond(), "y", callbacks=Callback(pretask=lambda key, dsk, state: seen.append(key)))
    assert sorted(seen) == ["w", "y", "y", "z"] and active == []


def test_finish_is_called_with_the_error_flag_and_a_broken_callback_propagates():
    flags = []

    def bad(x):
        raise ValueError("task failed")

    with Callback(finish=lambda dsk, state, errored: flags.append(errored)):
        with pytest.raises(ValueError, match="task failed"):
            dd.get({"x": 1, "y": (bad, "x")}, "y")
        assert dd.get({"x": 1, "y": (inc, "x")}, "y") == 2
    assert flags == [True, False]

    def broken(*args):
        raise ValueError("my_exception")

    finished = []
    ok = Callback(start=lambda dsk: None, finish=lambda *a: finished.append("ok"))
    broken_start = Callback(start=broken, finish=lambda *a: finished.append("broken"))
    with broken_start, ok, pytest.raises(ValueError, match="my_exception"):
        dd.get({"x": 1}, "x")
    assert "broken" not in finished  # only the callbacks that started are finished
    with Callback(posttask=broken), pytest.raises(ValueError, match="my_exception"):
        dd.get(_diamond(), "w")


def test_nested_computes_leave_callbacks_to_the_outer_one():
    keys = []

    def outer(x):
        return dd.get({"a": (inc, x)}, "a")

    with Callback(pretask=lambda key, dsk, state: keys.append(key)):
        assert dd.get({"x": 1, "y": (outer, "x")}, "y") == 2
    assert keys == ["y"]


def test_progress_bar():
    import dask.array as da
    import numpy as np

    out = io.StringIO()
    x = dask.delayed(add)(dask.delayed(inc)(1), dask.delayed(inc)(2))
    with ProgressBar(out=out, dt=0.001):
        assert x.compute(scheduler="depengine") == 5
    assert "100% Completed" in out.getvalue()
    out = io.StringIO()
    a = da.arange(400.0, chunks=20).reshape(20, 20).rechunk(5)  # the example, small
    with ProgressBar(out=out, dt=0.001):
        assert a.std().compute(scheduler="depengine") == pytest.approx(np.arange(400.0).std())
    assert "100% Completed" in out.getvalue()


def test_profiler_records_every_task_under_its_key():
    dsk = _diamond()
    with Profiler() as prof:
        dd.get(dsk, "w")
    assert sorted(r.key for r in prof.results) == ["w", "y", "z"]
    for r in prof.results:
        assert r.start_time <= r.end_time and r.worker_id != threading.get_ident()
    assert {r.key: r.task for r in prof.results}["w"].func is add


def test_cache_profiler_sees_releases():
    with CacheProfiler() as cprof:
        dd.get(_diamond(), "w")
    by_key = {r.key: r for r in cprof.results}
    assert sorted(by_key) == ["w", "y", "z"]
    assert by_key["y"].free_time <= by_key["w"].free_time  # y was released when w ran
    assert all(r.metric == 1 for r in cprof.results)


def test_resource_profiler():
    ready = threading.Event()

    def busy():
        # long enough for the profiler's sampling process to take a sample
        ready.wait(0.5)
        return 1

    with ResourceProfiler(dt=0.01) as rprof:
        assert dd.get({"x": (busy,)}, "x") == 1
    assert rprof.results and all(r.mem > 0 for r in rprof.results)


# ------------------------------------------------------------------ cache
def test_cache_config_holds_live_values_and_supplies_missing_keys():
    cache = {}
    seen = []

    def inc2(x):
        seen.append(dict(cache))
        return x + 1

    with dask.config.set(cache=cache):
        assert dd.get({"x": (inc2, "y"), "y": 1}, "x") == 2
    assert seen == [{"y": 1}]  # the data was there while the task ran
    assert cache == {"x": 2}   # y released; the requested key stays
    assert dd.get({"z": (inc, "x")}, "z", cache=cache) == 3  # keys missing from the graph: from the cache


# ------------------------------------------------------------- profiler
def test_depengine_profile_names_ops_and_vars_after_keys():
    viz = pytest.importorskip("viz")
    with de.profile() as prof:
        assert dd.get({"x": 1, ("y", 0): (inc, "x"), "z": (inc, "x"), "w": (add, ("y", 0), "z")}, "w") == 4
    trace = prof.trace()
    names = sorted(r.name for r in trace.ops)
    assert names == ["('y', 0)", "w", "z"]
    by_id = {r.key: r.name for r in trace.ops}
    edges = {(by_id[e.src], by_id[e.dst], e.var) for e in trace.edges()}
    assert edges == {("('y', 0)", "w", "('y', 0)"), ("z", "w", "z")}
    dot = viz.dependency_graph(prof).source  # what `depengine viz` draws
    assert "('y', 0)" in dot
