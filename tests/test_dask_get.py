"""depengine.dask.get: dask's own test mixin, graph forms, results, errors, registration."""

from __future__ import annotations

import functools
import importlib
import subprocess
import sys
import threading
import traceback
import warnings

import pytest

pytest.importorskip("dask")

import dask
import dask.base
from dask._task_spec import Alias, DataNode, Dict, List, Task, TaskRef
from dask.highlevelgraph import HighLevelGraph
from dask.utils_test import GetFunctionTestMixin, add, inc

import depengine as de
import depengine.dask as dd

pytestmark = pytest.mark.usefixtures("dask_bridge")  # the bridge's engines: see conftest


class TestDepengineGet(GetFunctionTestMixin):
    get = staticmethod(dd.get)


class TestDepengineGetOneWorker(GetFunctionTestMixin):
    get = staticmethod(functools.partial(dd.get, num_workers=1))


class TestDepengineGetNaiveEngine(GetFunctionTestMixin):
    @staticmethod
    def get(dsk, keys, **kwargs):
        with de.Engine("naive") as eng:
            return dd.get(dsk, keys, engine=eng, **kwargs)


# ------------------------------------------------------------ graph forms
def test_task_spec_nodes():
    t1 = Task("t1", inc, 1)
    dsk = {
        "t1": t1,
        "data": DataNode("data", [1, 2, 3]),
        "alias": Alias("alias", "t1"),
        "list": List(t1.ref(), TaskRef("data"), 7),
        "dict": Task("dict", dict, Dict(a=TaskRef("t1"), b=5)),
        "kw": Task("kw", functools.partial(sorted), TaskRef("data"), reverse=True),
        "nested": Task("nested", add, Task(None, inc, TaskRef("t1")), TaskRef("alias")),
    }
    assert dd.get(dsk, ["t1", "data", "alias", "list", "dict", "kw", "nested"]) == (
        2, [1, 2, 3], 2, [2, [1, 2, 3], 7], {"a": 2, "b": 5}, [3, 2, 1], 5)


def test_high_level_graph_and_expression_objects():
    layers = {"a": {"x": 1, "y": (inc, "x")}, "b": {"z": (add, (inc, "x"), "y")}}
    assert dd.get(HighLevelGraph(layers, {"a": set(), "b": {"a"}}), "z") == 4
    d = dask.delayed(add)(dask.delayed(inc)(1), 10)
    seen = []

    def spy(dsk, keys, **kwargs):
        seen.append(type(dsk))
        return dd.get(dsk, keys, **kwargs)

    assert d.compute(scheduler=spy) == 12
    assert seen and not issubclass(seen[0], dict)  # what dask.compute hands a scheduler today
    with pytest.raises(TypeError, match="not a dask graph"):
        dd.get(42, "x")


def test_legacy_tuples_keys_and_literals():
    dsk = {
        ("x", 0): 1, ("x", 1): 2, "s": "not-a-key", 3: 30,
        "t": (add, ("x", 0), ("x", 1)),          # tuple keys are references
        "u": (add, "s", "!"),                    # a string that is not a key is a value
        "v": (add, 3, 1),                        # an int key is a reference too
        "w": (sum, [("x", 0), ("x", 1), 3]),     # nested lists are walked
        "n": (add, (inc, ("x", 0)), 100),        # nested task
        "lit": (len, ((1, 2), [3])),             # a tuple that is no key is a value
        "d": (sorted, {"k": ("x", 0)}),          # dicts are walked
    }
    assert dd.get(dsk, ["t", "u", "v", "w", "n", "lit", "d"]) == (3, "not-a-key!", 31, 33, 102, 2, ["k"])


def test_legacy_arguments_holding_keys_and_tasks_match_dask():
    import collections

    import dask.local

    point = collections.namedtuple("point", "a b")
    dsk = {
        "x": 1, ("y", 0): 2,
        "lists": (list, [[("y", 0), "x"], [(inc, "x"), 5], ("x", (inc, ("y", 0)))]),
        "sets": (sorted, {"x", ("y", 0), 7}),
        "dicts": (dict, {"a": "x", "b": [(inc, "x")], "c": {"d": ("y", 0)}}),  # values, as in dask
        "deep": (add, (add, (inc, "x"), (inc, (inc, ("y", 0)))), 100),
        "no keys": (add, (inc, 1), (1, (2, 3)).__len__()),
        "named": (lambda p: p.a + p.b, point("x", 3)),  # namedtuples: dask's own converter
        "same key twice": (lambda *a: a, "x", ["x", ("x", "x")], "x"),
    }
    keys = list(dsk)[2:]
    assert dd.get(dsk, keys) == dask.local.get_sync(dsk, keys)


def test_results_are_shaped_like_dask():
    dsk = {"x": 1, "y": (inc, "x"), "z": (add, "x", "y")}
    assert dd.get(dsk, "z") == 3
    assert dd.get(dsk, ["z"]) == (3,)
    assert dd.get(dsk, [["x", ["y"]], "z", "z"]) == ((1, (2,)), 3, 3)
    assert dd.get(dsk, []) == ()


def test_aliases_and_data_nodes():
    dsk = {"a": 1, "b": "a", "c": "b", "d": (inc, "c"), "e": "d", "f": (add, "e", "b")}
    assert dd.get(dsk, ["c", "e", "f", "d"]) == (1, 2, 3, 2)
    assert dd.get(dsk, "e") == 2


def test_long_chain_runs_without_recursion():
    n = 20_000
    dsk = {f"x{i + 1}": (inc, f"x{i}") for i in range(n)}
    dsk["x0"] = 0
    limit = sys.getrecursionlimit()
    depth = len(traceback.extract_stack())
    sys.setrecursionlimit(depth + 80)  # room for the calls of get itself, none per task
    try:
        assert dd.get(dsk, f"x{n}") == n
    finally:
        sys.setrecursionlimit(limit)


# ------------------------------------------------------------ bad input
def _recorder():
    ran = []

    def record(name, *args):
        ran.append(name)
        return name

    return ran, record


def test_missing_key_raises_key_error_before_anything_runs():
    ran, record = _recorder()
    dsk = {"a": (record, "ran a")}
    with pytest.raises(KeyError, match="nope"):
        dd.get(dsk, ["a", ["nope"]])
    assert ran == []


def test_missing_dependency_is_named_before_anything_runs():
    ran, record = _recorder()
    dsk = {"a": (record, "ran a"), "b": Task("b", record, "ran b", TaskRef("ghost"))}
    with pytest.raises(ValueError, match=r"Missing dependency 'ghost' of task 'b'"):
        dd.get(dsk, ["a", "b"])
    assert ran == []
    assert dd.get(dsk, "b", cache={"ghost": 1}) == "ran b"  # the cache supplies it


@pytest.mark.parametrize("dsk, path", [
    ({"a": (inc, "b"), "b": (inc, "c"), "c": (inc, "a"), "out": (inc, "a")}, "'a' -> 'b' -> 'c' -> 'a'"),
    ({"a": "b", "b": "a"}, "'a' -> 'b' -> 'a'"),
    ({"a": (inc, "a")}, "'a' -> 'a'"),
    ({"a": Alias("a", "a")}, "'a' -> 'a'"),
])
def test_cycles_are_reported_with_their_path_before_anything_runs(dsk, path):
    finished = []
    cb = dask.callbacks.Callback(finish=lambda dsk, state, errored: finished.append(errored))
    with cb, pytest.raises(ValueError, match=r"Cycle detected") as info:
        dd.get(dsk, "out" if "out" in dsk else "a")
    assert path in str(info.value)
    assert finished == [True]


def test_bad_arguments():
    dsk = {"x": (inc, 1)}
    with pytest.raises(TypeError, match=r"unexpected keyword argument.*scheduler_typo"):
        dd.get(dsk, "x", scheduler_typo=1)
    assert dd.get(dsk, "x", pool=None, chunksize=4) == 2  # dask.threaded's executor options: ignored
    with pytest.raises(ValueError, match="num_workers=0 must be >= 1"):
        dd.get(dsk, "x", num_workers=0)
    with pytest.raises(TypeError, match=r"num_workers=1\.5 must be an int"):
        dd.get(dsk, "x", num_workers=1.5)
    with pytest.raises(TypeError, match="must be a mutable mapping"):
        dd.get(dsk, "x", cache=[1])
    with pytest.raises(TypeError, match="must be a depengine Engine"):
        dd.get(dsk, "x", engine="threaded")
    with de.Engine("threaded", workers=1) as eng, pytest.raises(ValueError, match="contradicts engine"):
        dd.get(dsk, "x", engine=eng, num_workers=2)
    with pytest.raises(ValueError, match="is closed"):
        dd.get(dsk, "x", engine=eng)
    with dask.config.set(num_workers=-1), pytest.raises(ValueError, match="dask config num_workers=-1"):
        dd.get(dsk, "x")


# ------------------------------------------------------------ failures
class Oops(Exception):
    def __init__(self, a, b):
        super().__init__(f"oops {a} {b}")
        self.a, self.b = a, b


def _raise(x):
    raise Oops(x, "b")


def test_the_original_exception_arrives_with_its_traceback():
    dsk = {"x": 1, "y": (_raise, "x"), "z": (inc, "y")}
    with pytest.raises(Oops) as info:
        dd.get(dsk, "z")
    e = info.value
    assert (str(e), e.a, e.b) == ("oops 1 b", 1, "b")
    assert traceback.extract_tb(e.__traceback__)[-1].name == "_raise"
    assert any("raised by task 'y'" in note for note in e.__notes__)


def test_a_failure_stops_the_compute_and_never_reaches_the_engine():
    ran = []

    def step(name, _=None):
        ran.append(name)
        return name

    # One worker; the tallest branch starts first, and its first task fails.
    dsk = {("b", 0): (_raise, 0), ("c", 0): (step, "c0")}
    dsk.update({("b", i): (step, f"b{i}", ("b", i - 1)) for i in range(1, 60)})
    dsk.update({("c", i): (step, f"c{i}", ("c", i - 1)) for i in range(1, 50)})
    with de.Engine("threaded", workers=1) as eng:
        with pytest.raises(Oops):
            dd.get(dsk, [("c", 49), ("b", 59)], engine=eng)
        eng.wait_all()  # the engine was told of nothing: no failure to report here
        assert ran == []  # nothing ran after the failure
        assert dd.get(dsk, ("c", 3), engine=eng) == "c3"  # and the engine goes on working


@pytest.mark.parametrize("how", ["argument", "config"])
def test_rerun_exceptions_locally(how):
    threads = []

    def flaky(x):
        threads.append(threading.get_ident())
        raise Oops(x, len(threads))

    dsk = {"x": 1, "y": (flaky, "x")}
    with pytest.raises(Oops, match="oops 1 1"):
        dd.get(dsk, "y")
    assert threads[0] != threading.get_ident()
    threads.clear()
    if how == "argument":
        with pytest.raises(Oops, match="oops 1 2") as info:
            dd.get(dsk, "y", rerun_exceptions_locally=True)
    else:
        with dask.config.set(rerun_exceptions_locally=True), pytest.raises(Oops, match="oops 1 2") as info:
            dd.get(dsk, "y")
    assert len(threads) == 2 and threads[1] == threading.get_ident()  # rerun here, on the same input
    assert info.value.__notes__ == ["depengine.dask: raised by task 'y' (run again in the calling thread)"]


# ------------------------------------------------------------ registration
def test_the_scheduler_name_is_registered():
    assert dask.base.named_schedulers["depengine"] is dd.get
    assert dask.base.get_scheduler(scheduler="depengine") is dd.get
    x = dask.delayed(inc)(1)
    with dask.config.set(scheduler="depengine"):
        assert dask.base.get_scheduler(collections=[x]) is dd.get
        assert x.compute() == 2


def test_registration_is_guarded_against_a_dask_without_the_table(monkeypatch):
    monkeypatch.delattr(dask.base, "named_schedulers")
    with pytest.raises(RuntimeError, match=r"no dask\.base\.named_schedulers table.*scheduler=depengine"):
        dd.register()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.reload(dd)  # the import still works: the name is what is missing
    assert any("named_schedulers" in str(w.message) for w in caught)
    assert module.get({"x": (inc, 1)}, "x") == 2
    monkeypatch.undo()
    importlib.reload(dd)
    assert dask.base.named_schedulers["depengine"] is dd.get


def test_import_depengine_does_not_import_dask():
    code = "import sys, depengine; assert 'dask' not in sys.modules, 'dask imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_exported_names_are_pinned():
    assert sorted(dd.__all__) == ["SCHEDULER_NAME", "get", "register", "shutdown"]
    assert dd.SCHEDULER_NAME == "depengine"


def test_fused_tasks_run_without_dask_order_and_give_dasks_result():
    import numpy as np

    from depengine.dask import _convert, _graph

    if _convert.FUSED is None:
        pytest.skip("this dask's _execute_subgraph differs: dask's own function runs")
    da = pytest.importorskip("dask.array")
    x = da.arange(64, chunks=8).reshape(8, 8).rechunk(4)
    seen = {}

    def spy(dsk, keys, **kwargs):
        seen["dsk"] = dask.utils.ensure_dict(dsk.__dask_graph__() if hasattr(dsk, "__dask_graph__") else dsk)
        return dd.get(dsk, keys, **kwargs)

    np.testing.assert_array_equal(((x + x.T) * 2).sum(axis=0).compute(scheduler=spy),
                                  ((np.arange(64).reshape(8, 8) + np.arange(64).reshape(8, 8).T) * 2).sum(0))
    dsk = seen["dsk"]
    fused = [k for k, v in dsk.items() if isinstance(v, Task) and v.func is _convert.FUSED]
    assert fused
    plan = _graph.build(dsk, fused)
    assert {n.key for n in plan.tasks if n.fn is _graph.run_subgraph} == set(fused)
    for n in plan.tasks:  # dependencies first: each fused task sees what dask's would
        data = {k: plan.value(k) for k in dsk[n.key].dependencies} if n.key in dsk else {}
        n.store(n.call())
        if n.key in fused:
            np.testing.assert_array_equal(n.value, dsk[n.key](data))
