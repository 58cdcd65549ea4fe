"""Recorded-plan replay and imperative bulking against plain pushes, in one run.

    python -m bench.replay [--width 16] [--steps 200] [--runs 10] [--chain 20000] [--repeats 5]
    python -m bench.replay --instructions   # the chain under callgrind (needs valgrind)

Replay: the stencil_1d program (op (t, i) reads columns i-1 and i+1 and
writes column i; empty op bodies) is recorded once with
``record(execute=False)`` and compiled; then ``--runs`` copies are pushed
imperatively and ``--runs`` replays of the plan are run, each timed from the
first push to the return of ``wait_all()``.  The same with empty native
bodies (``de.native``): pushed, replayed by the compiled core in C (every
member native: ``plan.native``), and replayed through the plan's Python
chunks (the same plan with ``plan.native`` set aside).  Bulk: ``--chain`` empty ops
all writing one var, unbulked and inside ``eng.bulk(64)``.  Figures are
medians of ``--repeats`` alternating measurements on a threaded engine with
2 workers (``--workers``); ratios compare figures of the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import depengine as de

from . import callgrind
from .throughput import _empty_cfunc

MODES = ("imperative", "replay", "native", "native replay", "native replay, Python chunks", "unbulked",
         "bulk64")


def _empty(ctx):
    pass


def _timed(fn, eng, ops: int) -> float:
    t0 = time.perf_counter()
    fn()
    eng.wait_all()
    return (time.perf_counter() - t0) / ops * 1e6


def measure(kind: str, workers: int, width: int, steps: int, runs: int, chain: int, repeats: int) -> dict:
    with de.Engine(kind, workers=workers) as eng:
        cols = [eng.new_var(f"c{i}") for i in range(width)]
        rows = [([cols[j] for j in (i - 1, i + 1) if 0 <= j < width], [cols[i]]) for i in range(width)]

        def program(body=_empty):
            push = eng.push
            for _ in range(steps):
                for reads, writes in rows:
                    push(body, reads=reads, writes=writes)

        def recorded(body=_empty):
            with eng.record(execute=False) as g:
                program(body)
            return g.compile()

        plan = recorded()
        native = de.native(_empty_cfunc())
        native_plan, python_chunks = recorded(native), recorded(native)
        python_chunks.native = None

        def imperative(body=_empty):
            for _ in range(runs):
                program(body)

        def replay(plan=plan):
            for _ in range(runs):
                plan.run()

        v = eng.new_var("chain")

        def unbulked():
            push = eng.push
            for _ in range(chain):
                push(_empty, writes=[v])

        def bulked():
            push = eng.push
            with eng.bulk(64):
                for _ in range(chain):
                    push(_empty, writes=[v])

        found: dict[str, list[float]] = {k: [] for k in MODES}
        n = runs * width * steps
        for _ in range(repeats):
            found["imperative"].append(_timed(imperative, eng, n))
            found["replay"].append(_timed(replay, eng, n))
            found["native"].append(_timed(lambda: imperative(native), eng, n))
            found["native replay"].append(_timed(lambda: replay(native_plan), eng, n))
            found["native replay, Python chunks"].append(_timed(lambda: replay(python_chunks), eng, n))
            found["unbulked"].append(_timed(unbulked, eng, chain))
            found["bulk64"].append(_timed(bulked, eng, chain))
        return {"plan": repr(plan), "native plan": native_plan.native is not None,
                **{k: statistics.median(x) for k, x in found.items()},
                "spread": {k: (min(x), max(x)) for k, x in found.items()}}


def _chain_child(mode: str, steps: int, workers: int) -> None:
    """``steps`` x 100 empty ops on one var, bulked or not (run under callgrind)."""
    with de.Engine("threaded", workers=workers) as eng:
        v = eng.new_var("chain")
        push = eng.push
        if mode == "bulk64":
            with eng.bulk(64):
                for _ in range(steps * 100):
                    push(_empty, writes=[v])
        else:
            for _ in range(steps * 100):
                push(_empty, writes=[v])
        eng.wait_all()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="threaded")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--chain", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--instructions", action="store_true",
                    help="instructions per op of the chain, unbulked and bulk(64), under callgrind")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _chain_child(args.child, args.steps, args.workers)
        return 0
    if args.instructions:
        if not callgrind.available():
            ap.error("--instructions needs valgrind (Debian: apt-get install valgrind)")
        counts = {mode: callgrind.instructions_per_op("bench.replay", ["--child", mode, "--workers",
                                                                       str(args.workers)], 200, 1000, 100)
                  for mode in ("unbulked", "bulk64")}
        print(f"chain of empty ops, threaded engine, {args.workers} workers: instructions per op "
              "(callgrind, 100 000 - 20 000 ops)")
        for mode, c in counts.items():
            print(f"  {mode:9s} {c:9.0f}")
        print(f"  unbulked / bulk64: {counts['unbulked'] / counts['bulk64']:.2f}")
        return 0
    r = measure(args.kind, args.workers, args.width, args.steps, args.runs, args.chain, args.repeats)
    print(f"engine {args.kind}, {args.workers} workers; plan: {r['plan']}; "
          f"native plan replays in C: {r['native plan']}")
    for key in MODES:
        lo, hi = r["spread"][key]
        print(f"  {key:<28} {r[key]:7.2f} us/op  (min {lo:.2f}, max {hi:.2f})")
    print(f"  replay is {r['imperative'] / r['replay']:.1f}x faster than imperative pushes")
    print(f"  native replay is {r['native'] / r['native replay']:.1f}x faster than native pushes, "
          f"{r['native replay, Python chunks'] / r['native replay']:.1f}x faster than its Python chunks")
    print(f"  bulk(64) is {r['unbulked'] / r['bulk64']:.1f}x faster than unbulked pushes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
