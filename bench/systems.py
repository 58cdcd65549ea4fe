"""The systems a benchmark compares, each running the same graphs and kernels.

A system is a :class:`System`: a name, the modules it needs, and
``run(graphs, kernel, workers) -> Run`` that executes every task once and
returns the last output of every column plus the wall time from the first
submission to the last completion (engine, pool or cluster start-up excluded).

Built in: depengine's engine kinds, pushing every task; ``depengine-native``, every
task a native op body run without the GIL (bench/native_system.py); ``depengine-replay``,
the threaded engine used the way a program that repeats its steps would use
it: one period of steps is recorded (``record(execute=False)``), compiled and
replayed (record and compile are inside the timed region; steps before the
period starts and after the last whole period are pushed); the task graph,
its validation and the kernels stay the same (after Task Bench's Legion
runs, which replay traces of repeated steps); ``concurrent.futures.ThreadPoolExecutor``
(a task submits a function that takes its dependencies' ``Future.result()``,
the way a user would write it); ``static-threads``, no scheduler at all
(see bench/static_threads.py: the floor for a Python scheduler here);
``dask.threaded.get``;
``dask-on-depengine``, the same dask graph run by ``depengine.dask.get`` (dask's
scheduler interface on the threaded engine: issue 16);
``dask.distributed`` on an in-process ``LocalCluster`` (dask from the bench
extra); ``depengine-mpi`` and ``mpi4py``, the graph across ``workers`` MPI
ranks (from the mpi extra; see bench/mpi_taskbench.py).  More peers plug in
through the ``depengine.bench_systems`` entry point group: each entry point
names a callable returning a ``System``; they run only when importable.
"""

from __future__ import annotations

import functools
import importlib.util
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .kernels import Kernel
from .native_system import run_depengine_native
from .static_threads import run_static_threads
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


class _Replayed:
    """The function of one recorded task (t, i): every replay runs it ``length`` steps later.

    A plan's runs never overlap and each run runs each recorded op once, so
    the op's own counter tells the step it stands for.  A scheduler that ran
    a replay out of order would feed it inputs of the wrong step, and
    ``task_output`` would reject them.
    """

    __slots__ = ("deps", "dst", "graph", "i", "kernel", "length", "src", "t")

    def __init__(self, graph, t, i, deps, kernel, src, dst, length) -> None:
        self.graph, self.t, self.i, self.deps = graph, t, i, deps
        self.kernel, self.src, self.dst, self.length = kernel, src, dst, length

    def __call__(self, ctx) -> None:
        t = self.t
        self.t = t + self.length
        src = self.src
        self.dst[self.i] = _task(self.graph, t, self.i, self.deps, self.kernel, [src[j] for j in self.deps])


def replay_span(graphs: list[Graph], tables=None, min_length: int = 32) -> tuple[int, int, int] | None:
    """``(first, length, runs)``: steps ``first .. first + runs * length - 1`` replay one recorded plan.

    From step ``first`` on, every graph's step t has the tasks and
    dependencies of step t + ``length`` (``length`` is even, because outputs
    are double-buffered by step parity, and at least ``min_length`` steps
    where the graph allows, to spread each run's start and end over many
    tasks).  None when the graphs differ in steps or no period of at most 64
    steps repeats twice.  ``tables`` are the graphs' dependency tables, if
    already computed.
    """
    steps = graphs[0].steps
    if any(g.steps != steps for g in graphs):
        return None
    tables = tables or [dependency_table(g) for g in graphs]
    pairs = list(zip(graphs, tables, strict=True))
    shapes = [tuple(tuple((i, table[t][i]) for i in g.points(t)) for g, table in pairs) for t in range(steps)]
    best = None
    for period in range(2, min(64, (steps - 1) // 2) + 1, 2):
        first = 1  # step 0 reads nothing: it never repeats
        for t in range(steps - 1 - period, 0, -1):
            if shapes[t] != shapes[t + period]:
                first = t + 1
                break
        if steps - first >= 2 * period and (best is None or first < best[0]):
            best = (first, period)
    if best is None:
        return None
    first, period = best
    length = period * max(1, -(-min_length // period))
    while length > period and steps - first < 2 * length:
        length -= period
    runs = (steps - first) // length
    return (first, length, runs) if runs >= 2 else None


def _run_depengine(kind: str, graphs: list[Graph], kernel: Kernel, workers: int, replay: bool = False) -> Run:
    import depengine as de

    with de.Engine(kind, workers=workers) as eng:
        cols = []
        for g in graphs:
            # Double-buffered outputs: step t writes buffer t % 2 and reads t-1's.
            bufs = ([None] * g.width, [None] * g.width)
            vs = ([eng.new_var(f"g{g.index}b0c{i}") for i in range(g.width)],
                  [eng.new_var(f"g{g.index}b1c{i}") for i in range(g.width)])
            cols.append((g, dependency_table(g), bufs, vs))
        push = eng.push
        partial = functools.partial

        def push_steps(first: int, stop: int, length: int = 0) -> None:
            for t in range(first, stop):
                for g, table, bufs, vs in cols:
                    if t >= g.steps:
                        continue
                    src, dst = bufs[(t - 1) % 2], bufs[t % 2]
                    srcv, dstv = vs[(t - 1) % 2], vs[t % 2]
                    row = table[t]
                    for i in g.points(t):
                        deps = row[i]
                        fn = (_Replayed(g, t, i, deps, kernel, src, dst, length) if length else
                              partial(_depengine_task, g, t, i, deps, kernel, src, dst))
                        push(fn, [srcv[j] for j in deps], (dstv[i],))

        steps = max(g.steps for g in graphs)
        # Where the graph repeats is the program's knowledge, like its dependency table: not timed.
        span = replay_span(graphs, [c[1] for c in cols]) if replay else None
        start = time.perf_counter()
        if span is None:
            push_steps(0, steps)
        else:  # record one period of steps (timed too), replay it, push what is left
            first, length, runs = span
            push_steps(0, first)
            with eng.record(execute=False) as recording:
                push_steps(first, first + length, length)
            plan = recording.compile()
            for _ in range(runs):
                plan.run()
            push_steps(first + runs * length, steps)
        eng.wait_all()
        seconds = time.perf_counter() - start
        last = {g.index: _last_outputs(g, lambda t, i, bufs=bufs: bufs[t % 2][i]) for g, _, bufs, _ in cols}
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


def _run_dask_depengine(graphs: list[Graph], kernel: Kernel, workers: int) -> Run:
    import depengine as de
    import depengine.dask

    with de.Engine("threaded", workers=workers) as eng:  # what get(num_workers=) makes, kept for the run
        start = time.perf_counter()
        dsk, keys = _dask_graph(graphs, kernel)
        values = depengine.dask.get(dsk, keys, engine=eng)
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


# ---------------------------------------------------------------------- MPI
def _run_mpi(system: str, graphs: list[Graph], kernel: Kernel, workers: int) -> Run:
    from .mpi_taskbench import launch

    return launch(system, graphs, kernel, workers)


# ----------------------------------------------------------------- registry
def _builtin_systems() -> list[System]:
    return [
        System("depengine-threaded", functools.partial(_run_depengine, "threaded")),
        System("depengine-replay", functools.partial(_run_depengine, "threaded", replay=True)),
        System("depengine-perdevice", functools.partial(_run_depengine, "perdevice")),
        System("depengine-naive", functools.partial(_run_depengine, "naive")),
        System("depengine-native", run_depengine_native),
        System("futures", _run_futures),
        System("static-threads", run_static_threads),
        System("dask-threaded", _run_dask_threaded, requires=("dask",)),
        System("dask-on-depengine", _run_dask_depengine, requires=("dask",)),
        System("dask-distributed", _run_dask_distributed, requires=("dask", "distributed")),
        # across MPI ranks, one rank per worker (bench/mpi_taskbench.py)
        System("depengine-mpi", functools.partial(_run_mpi, "depengine-mpi"), requires=("mpi4py",)),
        System("mpi4py", functools.partial(_run_mpi, "mpi4py"), requires=("mpi4py",)),
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
