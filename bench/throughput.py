"""Engine overhead: empty Python op bodies, end-to-end microseconds per op.

    python -m bench.throughput [--steps 2000] [--width 16] [--workers 2] [--repeats 5]

The depengine systems run on the compiled core; each ``-python`` twin is the
same engine on the pure-Python reference (``core="python"``), measured in the
same run; ``depengine-native`` pushes empty native op bodies (a numba cfunc,
``de.native``) instead of empty Python functions.

Patterns (one var per column, 16 columns):
  trivial     every op writes its own fresh var: no dependencies at all
  chain       every op writes the same var: one long chain
  stencil_1d  op (t, i) reads columns i-1 and i+1 and writes column i

Each depengine kind runs the ops as pushes; concurrent.futures and
dask.threaded.get run the same dependency graph (a task depends on the ops
that last wrote what it reads and writes).  Figures are medians of
``--repeats`` runs, measured from the first push (or graph construction) to
the return of the final wait.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import depengine as de

PATTERNS = ("trivial", "chain", "stencil_1d")


def _empty(ctx):
    pass


def _neighbours(width: int, i: int) -> list[int]:
    return [j for j in (i - 1, i + 1) if 0 <= j < width]


def run_depengine(kind, pattern, width, steps, workers, core=None, native=False) -> float:
    fn = de.native(_empty_cfunc()) if native else _empty
    with de.Engine(kind, workers=workers, core=core) as eng:
        n = width * steps
        if pattern == "trivial":
            vs = [eng.new_var() for _ in range(n)]
            plan = [((), (vs[k],)) for k in range(n)]
        elif pattern == "chain":
            v = eng.new_var()
            plan = [((), (v,))] * n
        else:
            vs = [eng.new_var() for _ in range(width)]
            row = [([vs[j] for j in _neighbours(width, i)], [vs[i]]) for i in range(width)]
            plan = row * steps
        push = eng.push
        start = time.perf_counter()
        for reads, writes in plan:
            push(fn, reads=reads, writes=writes)
        eng.wait_all()
        return time.perf_counter() - start


def _deps(pattern, width, t, i):
    """The ops that (t, i) waits for: those that last wrote what it reads or writes."""
    if pattern == "trivial":
        return []
    if pattern == "chain":  # the op pushed just before
        if i:
            return [(t, i - 1)]
        return [(t - 1, width - 1)] if t else []
    return [(t - 1, j) for j in (i - 1, i, i + 1) if 0 <= j < width and t]


def _waiting(futures):
    for f in futures:
        f.result()


def run_futures(pattern, width, steps, workers) -> float:
    with ThreadPoolExecutor(max_workers=workers) as ex:
        futs = {}
        start = time.perf_counter()
        for t in range(steps):
            for i in range(width):
                futs[t, i] = ex.submit(_waiting, [futs[d] for d in _deps(pattern, width, t, i)])
        for f in futs.values():
            f.result()
        return time.perf_counter() - start


def _dask_task(deps):
    return None


def run_dask(pattern, width, steps, workers) -> float:
    import dask.threaded

    start = time.perf_counter()
    dsk = {(t, i): (_dask_task, [d for d in _deps(pattern, width, t, i)])
           for t in range(steps) for i in range(width)}
    dask.threaded.get(dsk, list(dsk), num_workers=workers)
    return time.perf_counter() - start


def _empty_cfunc():
    """A native op body that does nothing (a numba cfunc, compiled once, cached)."""
    import numba
    from numba import types

    global _EMPTY_CFUNC
    if _EMPTY_CFUNC is None:
        _EMPTY_CFUNC = numba.cfunc(types.int32(types.voidptr), nogil=True, cache=True)(_empty_native)
    return _EMPTY_CFUNC


def _empty_native(p):
    return 0


_EMPTY_CFUNC = None


def _depengine(kind, core=None, native=False):
    return lambda *a: run_depengine(kind, *a, core=core, native=native)


# compiled core by default; "-python": the same engine on the pure-Python reference
SYSTEMS = {
    "depengine-naive": _depengine("naive"),
    "depengine-naive-python": _depengine("naive", "python"),
    "depengine-threaded": _depengine("threaded"),
    "depengine-threaded-python": _depengine("threaded", "python"),
    "depengine-perdevice": _depengine("perdevice"),
    "depengine-perdevice-python": _depengine("perdevice", "python"),
    "depengine-native": _depengine("threaded", native=True),
    "depengine-native-python": _depengine("threaded", "python", native=True),
    "futures": run_futures,
    "dask-threaded": run_dask,
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=PATTERNS)
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    args = p.parse_args(argv)
    print(f"empty ops, width={args.width}, steps={args.steps}, workers={args.workers}, "
          f"median of {args.repeats} runs (min-max), us/op end-to-end")
    print(f"{'pattern':12s} {'system':22s} {'us/op':>8s} {'range':>16s}")
    for pattern in args.patterns:
        n = args.width * args.steps
        medians = {}
        for name in args.systems:
            runs = [SYSTEMS[name](pattern, args.width, args.steps, args.workers) / n * 1e6
                    for _ in range(args.repeats)]
            medians[name] = statistics.median(runs)
            print(f"{pattern:12s} {name:26s} {medians[name]:8.2f} "
                  f"{min(runs):7.2f}-{max(runs):7.2f}", flush=True)
        for name in args.systems:
            python = medians.get(f"{name}-python")
            if python:
                print(f"{pattern:12s} {name:26s} compiled core {python / medians[name]:.2f}x faster than "
                      "the pure-Python reference", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
