"""The systems a benchmark compares, each running the same graphs and kernels.

A system is a :class:`System`: a name, the modules it needs, and
``run(graphs, kernel, workers) -> Run`` that executes every task once and
returns the last output of every column plus the wall time from the first
submission to the last completion (engine, pool or cluster start-up excluded).

Built in: depengine's engine kinds; ``concurrent.futures.ThreadPoolExecutor``
(a task submits a function that takes its dependencies' ``Future.result()``,
the way a user would write it); ``dask.threaded.get`` and
``dask.distributed`` on an in-process ``LocalCluster`` (both from the bench
extra).  More peers plug in through the ``depengine.bench_systems`` entry
point group: each entry point names a callable returning a ``System``; they
run only when importable.
"""

from __future__ import annotations

import functools
import importlib.util
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .kernels import Kernel
from .taskbench import Graph, ValidationError, dependency_table, expected_outputs, task_output

__all__ = ["Run", "System", "available_systems", "get_system", "validate"]


@dataclass
class Run:
    seconds: float
    outputs: dict[int, dict[int, tuple]]  # graph index -> column -> last output
    ntasks: int


@dataclass
class System:
    name: str
    run: Callable[[list[Graph], Kernel, int], Run]
    requires: tuple[str, ...] = ()
    setup: Callable[[int], object] | None = field(default=None, repr=False)

    def available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.requires)


def _task(graph: Graph, t: int, i: int, deps, kernel: Kernel, inputs):
    kernel.run(t, i)
    return task_output(graph, t, i, deps, inputs)


def _last_outputs(graph: Graph, value_of) -> dict[int, tuple]:
    last = {}
    for t in range(graph.steps):
        for i in graph.points(t):
            last[i] = (t, i)
    return {i: value_of(t, i) for i, (t, _) in last.items()}


# ---------------------------------------------------------------- depengine
def _depengine_task(graph, t, i, deps, kernel, src, dst, ctx):
    dst[i] = _task(graph, t, i, deps, kernel, [src[j] for j in deps])


def _run_depengine(kind: str, graphs: list[Graph], kernel: Kernel, workers: int) -> Run:
    import depengine as de

    with de.Engine(kind, workers=workers) as eng:
        plans = []
        for g in graphs:
            # Double-buffered outputs: step t writes buffer t % 2 and reads t-1's.
            bufs = ([None] * g.width, [None] * g.width)
            vs = ([eng.new_var(f"g{g.index}b0c{i}") for i in range(g.width)],
                  [eng.new_var(f"g{g.index}b1c{i}") for i in range(g.width)])
            plans.append((g, dependency_table(g), bufs, vs))
        last: dict[int, dict[int, tuple]] = {g.index: {} for g in graphs}
        steps = max(g.steps for g in graphs)
        push = eng.push
        partial = functools.partial
        start = time.perf_counter()
        for t in range(steps):
            for g, table, bufs, vs in plans:
                if t >= g.steps:
                    continue
                src, dst = bufs[(t - 1) % 2], bufs[t % 2]
                srcv, dstv = vs[(t - 1) % 2], vs[t % 2]
                row = table[t]
                for i in g.points(t):
                    deps = row[i]
                    push(partial(_depengine_task, g, t, i, deps, kernel, src, dst),
                         reads=[srcv[j] for j in deps], writes=[dstv[i]])
        eng.wait_all()
        seconds = time.perf_counter() - start
        for g, _, bufs, _ in plans:
            last[g.index] = _last_outputs(g, lambda t, i, bufs=bufs: bufs[t % 2][i])
    return Run(seconds, last, sum(g.ntasks() for g in graphs))


# ------------------------------------------------------ concurrent.futures
def _run_futures(graphs: list[Graph], kernel: Kernel, workers: int) -> Run:
    def waiting_task(g, t, i, deps, dep_futures):
        return _task(g, t, i, deps, kernel, [f.result() for f in dep_futures])

    with ThreadPoolExecutor(max_workers=workers) as ex:
        tables = {g.index: dependency_table(g) for g in graphs}
        futs: dict[tuple[int, int, int], object] = {}
        steps = max(g.steps for g in graphs)
        start = time.perf_counter()
        for t in range(steps):
            for g in graphs:
                if t >= g.steps:
                    continue
                row = tables[g.index][t]
                for i in g.points(t):
                    deps = row[i]
                    dep_futures = [futs[g.index, t - 1, j] for j in deps]
                    futs[g.index, t, i] = ex.submit(waiting_task, g, t, i, deps, dep_futures)
        for f in futs.values():
            f.result()
        seconds = time.perf_counter() - start
    last = {g.index: _last_outputs(g, lambda t, i, g=g: futs[g.index, t, i].result()) for g in graphs}
    return Run(seconds, last, sum(g.ntasks() for g in graphs))


# --------------------------------------------------------------------- dask
def _dask_graph(graphs: list[Graph], kernel: Kernel) -> tuple[dict, list]:
    dsk = {}
    for g in graphs:
        table = dependency_table(g)
        for t in range(g.steps):
            for i in g.points(t):
                deps = table[t][i]
                dsk[("task", g.index, t, i)] = (
                    _task, g, t, i, deps, kernel, [("task", g.index, t - 1, j) for j in deps])
    keys = [("task", g.index, t, i) for g in graphs
            for t, i in _final_points(g)]
    return dsk, keys


def _final_points(g: Graph):
    last = {}
    for t in range(g.steps):
        for i in g.points(t):
            last[i] = t
    return sorted((t, i) for i, t in last.items())


def _collect(graphs, keys, values) -> dict[int, dict[int, tuple]]:
    out: dict[int, dict[int, tuple]] = {g.index: {} for g in graphs}
    for key, value in zip(keys, values, strict=True):
        out[key[1]][key[3]] = value
    return out


def _run_dask_threaded(graphs: list[Graph], kernel: Kernel, workers: int) -> Run:
    import dask.threaded

    start = time.perf_counter()
    dsk, keys = _dask_graph(graphs, kernel)
    values = dask.threaded.get(dsk, keys, num_workers=workers)
    seconds = time.perf_counter() - start
    return Run(seconds, _collect(graphs, keys, values), sum(g.ntasks() for g in graphs))


def _run_dask_distributed(graphs: list[Graph], kernel: Kernel, workers: int) -> Run:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=workers, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(lambda: None)  # the worker is up before the clock starts
        start = time.perf_counter()
        dsk, keys = _dask_graph(graphs, kernel)
        values = client.get(dsk, keys, sync=True)
        seconds = time.perf_counter() - start
    return Run(seconds, _collect(graphs, keys, values), sum(g.ntasks() for g in graphs))


# ----------------------------------------------------------------- registry
def _builtin_systems() -> list[System]:
    return [
        System("depengine-threaded", functools.partial(_run_depengine, "threaded")),
        System("depengine-perdevice", functools.partial(_run_depengine, "perdevice"),
               requires=("depengine.perdevice",)),
        System("depengine-naive", functools.partial(_run_depengine, "naive")),
        System("futures", _run_futures),
        System("dask-threaded", _run_dask_threaded, requires=("dask",)),
        System("dask-distributed", _run_dask_distributed, requires=("dask", "distributed")),
    ]


def _plugin_systems() -> list[System]:
    from importlib.metadata import entry_points

    found = []
    for ep in entry_points(group="depengine.bench_systems"):
        try:
            system = ep.load()()
        except Exception:  # a broken plugin must not break the benchmark
            continue
        if isinstance(system, System):
            found.append(system)
    return found


def all_systems() -> list[System]:
    return _builtin_systems() + _plugin_systems()


def available_systems() -> list[System]:
    return [s for s in all_systems() if s.available()]


def get_system(name: str) -> System:
    for s in all_systems():
        if s.name == name:
            if not s.available():
                raise ValueError(f"system {name!r} needs {', '.join(s.requires)}; "
                                 "install the bench extra: pip install -e '.[bench]'")
            return s
    names = ", ".join(s.name for s in all_systems())
    raise ValueError(f"unknown system {name!r}; known: {names}")


def validate(graphs: list[Graph], run: Run) -> None:
    """Raise ValidationError unless every column's last output is the serial one."""
    for g in graphs:
        want = expected_outputs(g)
        got = run.outputs.get(g.index, {})
        if got != want:
            bad = sorted(i for i in want if got.get(i) != want[i])
            raise ValidationError(f"graph {g.index} ({g.pattern}): {len(bad)} column(s) end with wrong "
                                  f"outputs, first column {bad[0] if bad else '?'}")
