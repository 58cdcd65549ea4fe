"""dask on depengine against dask.threaded: the targets of issue 16.

    python -m bench.dask_bridge [--workers 2] [--repeats 5] [--tasks 5000] [--workloads ...]

Workloads, each run by ``dask.threaded.get`` and ``depengine.dask.get`` with
the same number of workers, alternating, ``--repeats`` times each:

``fan-in``   N tiny Python tasks (``x + 1`` on an int) and one task summing them
``chain``    N tiny Python tasks, each reading the one before
``array``    ``((x + x.T) * 2 - 1).mean(axis=0)``, x 4000x4000 random in 100x100 chunks
``array-large``  the same in 1000x1000 chunks (16 chunks: the work dominates)

The graph of fan-in and chain is a plain dict of legacy tuples built once,
outside the timed region (both schedulers convert it inside ``get``); the
arrays are timed from ``compute()`` to its return, the way a user sees them
(dask's own graph optimisation is inside, the same for both).  Figures are
medians in ms and µs per task; the ratio is dask.threaded / depengine of the
medians.  Every result is checked against the other scheduler's.  A third
row, ``bodies alone``, times the tasks' own functions called one after
another in one thread with no scheduler (the graph dask hands a scheduler,
in depengine's order): what the work itself costs here, the figure any
scheduler's time on two GIL-sharing threads is to be read against.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

WORKLOADS = ("fan-in", "chain", "array", "array-large")


def _inc(x):
    return x + 1


def _total(*xs):
    return sum(xs)


def _graph(name: str, n: int):
    """(graph or collection, keys, task count) of a workload."""
    if name == "fan-in":
        dsk = {("a", i): (_inc, i) for i in range(n)}
        dsk["total"] = (_total, *[("a", i) for i in range(n)])
        return dsk, "total", n + 1
    if name == "chain":
        dsk = {("c", 0): 0}
        dsk.update({("c", i + 1): (_inc, ("c", i)) for i in range(n)})
        return dsk, ("c", n), n
    import dask.array as da

    chunks = 100 if name == "array" else 1000
    x = da.random.random((4000, 4000), chunks=(chunks, chunks))
    y = ((x + x.T) * 2 - 1).mean(axis=0)
    return y, None, len(_captured(y)[0])  # the tasks a scheduler gets, after dask's optimisation


class _Captured(Exception):
    pass


def _captured(collection):
    """The graph and keys ``dask.compute`` hands a scheduler for ``collection`` (nothing runs)."""
    from dask.utils import ensure_dict

    seen = {}

    def spy(dsk, keys, **kwargs):
        graph = dsk.__dask_graph__() if hasattr(dsk, "__dask_graph__") else dsk  # older dask: a graph
        seen["dsk"], seen["keys"] = ensure_dict(graph), keys
        raise _Captured

    try:
        collection.compute(scheduler=spy)
    except _Captured:
        pass
    return seen["dsk"], seen["keys"]


def _run(system: str, graph, keys, workers: int):
    if system == "depengine 1 worker":
        system, workers = "depengine", 1
    if keys is None:  # a collection
        scheduler = _schedulers()[system]
        start = time.perf_counter()
        value = graph.compute(scheduler=scheduler, num_workers=workers)
        return time.perf_counter() - start, value
    get = _schedulers()[system]
    start = time.perf_counter()
    value = get(graph, keys, num_workers=workers)
    return time.perf_counter() - start, value


def _schedulers() -> dict:
    import dask.threaded

    import depengine.dask

    return {"dask-threaded": dask.threaded.get, "depengine": depengine.dask.get}


def _bodies_alone(graph, keys) -> float:
    """Seconds the tasks' own functions take, called one after another in this thread: no
    scheduler at all (the graph as dask hands it to a scheduler, in depengine's order)."""
    from depengine.dask import _graph as plan_of

    if keys is None:  # a collection: take the graph dask.compute passes
        graph, keys = _captured(graph)
    plan = plan_of.build(graph, keys if isinstance(keys, list) else [keys])
    start = time.perf_counter()
    for n in plan.tasks:
        n.store(n.call())
    return time.perf_counter() - start


def measure(name: str, tasks: int, workers: int, repeats: int, one_worker: bool = False) -> dict:
    graph, keys, ntasks = _graph(name, tasks)
    systems = ["dask-threaded", "depengine"] + (["depengine 1 worker"] if one_worker else [])
    times: dict[str, list[float]] = {s: [] for s in [*systems, "bodies alone"]}
    results = {}
    for system in systems:  # warm them all (pools, engines, imports) outside the figures
        _run(system, graph, keys, workers)
    for _ in range(repeats):
        for system in systems:
            seconds, value = _run(system, graph, keys, workers)
            times[system].append(seconds)
            results[system] = value
        times["bodies alone"].append(_bodies_alone(graph, keys))
    a, b = results["dask-threaded"], results["depengine"]
    if not (np.allclose(a, b) if isinstance(a, np.ndarray) else a == b):
        raise AssertionError(f"{name}: the two schedulers disagree")
    med = {s: statistics.median(t) for s, t in times.items()}
    return {"workload": name, "ntasks": ntasks, "times": times, "median": med,
            "ratio": med["dask-threaded"] / med["depengine"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tasks", type=int, default=5000, help="N of fan-in and chain")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    p.add_argument("--one-worker", action="store_true",
                   help="also time depengine with one worker: what the second thread gains")
    args = p.parse_args(argv)
    print(f"workers={args.workers}, median of {args.repeats} alternating runs (min-max); "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC")
    print(f"{'workload':12s} {'tasks':>6s} {'system':18s} {'ms':>9s} {'range':>17s} {'us/task':>8s}  ratio")
    for name in args.workloads:
        m = measure(name, args.tasks, args.workers, args.repeats, args.one_worker)
        for system, ts in m["times"].items():
            med = m["median"][system]
            ratio = f"{m['ratio']:.1f}x" if system == "depengine" else ""
            print(f"{name:12s} {m['ntasks']:6d} {system:18s} {med * 1e3:9.1f} "
                  f"{min(ts) * 1e3:8.1f}-{max(ts) * 1e3:8.1f} {med / m['ntasks'] * 1e6:8.1f}  {ratio}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
