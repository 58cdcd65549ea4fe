"""``depengine demo``: the main job.

Part 1 pushes a small numba workload (kernels that release the GIL) through
the engine and prints which ops ran at the same time.  Part 2 factors an SPD
matrix with the tiled Cholesky of ``ops.linalg``, checks it against NumPy and
compares its speed with NumPy's LAPACK and dask in the same run.  Part 3 runs
the 2-d heat equation over tiles and checks it against NumPy.

``--train`` runs the training demo instead (``bench.train_demo``): an MLP on
two spirals trained with ``ops.autograd``, imperative and hybridized, against
hand-written NumPy and ``jax.jit``, with its loss curve as an SVG.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import numba
import numpy as np

import depengine as de
from scheduler import usable_cores

__all__ = ["main", "parallel_demo"]


@numba.njit(nogil=True, cache=True)
def smooth(src, dst, rounds):
    """``rounds`` passes of a 3-point average over ``src`` into ``dst`` (releases the GIL)."""
    n = src.shape[0]
    dst[:] = src
    tmp = np.empty_like(src)
    for _ in range(rounds):
        tmp[0] = dst[0]
        tmp[n - 1] = dst[n - 1]
        for k in range(1, n - 1):
            tmp[k] = (dst[k - 1] + dst[k] + dst[k + 1]) / 3.0
        dst[:] = tmp


def parallel_demo(workers: int, n: int = 200_000, rounds: int = 250) -> float:
    """Four independent smoothing kernels, then a combine; returns the overlap speedup."""
    rng = np.random.default_rng(0)
    data = [rng.standard_normal(n) for _ in range(4)]
    out = [np.empty(n) for _ in range(4)]
    smooth(data[0][:16], out[0][:16], 1)  # compile (or load the cache) before timing
    spans: dict[str, tuple[float, float, str]] = {}
    lock = threading.Lock()
    total = np.zeros(1)

    def timed(name, fn):
        def body(ctx):
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            with lock:
                spans[name] = (t0, t1, threading.current_thread().name)
        return body

    with de.Engine("threaded", workers=workers) as eng:
        ins = [eng.new_var(f"in{k}") for k in range(4)]
        outs = [eng.new_var(f"out{k}") for k in range(4)]
        tot = eng.new_var("total")
        start = time.perf_counter()
        for k in range(4):
            eng.push(timed(f"smooth{k}", lambda k=k: smooth(data[k], out[k], rounds)),
                     reads=[ins[k]], writes=[outs[k]], name=f"smooth{k}")
        eng.push(timed("combine", lambda: total.__setitem__(0, sum(float(o.sum()) for o in out))),
                 reads=outs, writes=[tot], name="combine")
        eng.wait_for_var(tot)
        wall = time.perf_counter() - start

    expected = 0.0
    for k in range(4):
        ref = np.empty(n)
        smooth(data[k], ref, rounds)
        expected += float(ref.sum())
    if not np.isclose(total[0], expected):
        raise SystemExit(f"demo result {total[0]} differs from the serial result {expected}")

    print(f"part 1: 4 numba kernels (nogil) + 1 combine on {workers} worker(s)")
    busy = sum(t1 - t0 for t0, t1, _ in spans.values())
    for name, (t0, t1, thread) in sorted(spans.items(), key=lambda kv: kv[1][0]):
        bar_start = int((t0 - start) / wall * 50)
        bar_len = max(1, int((t1 - t0) / wall * 50))
        print(f"  {name:9s} {thread:18s} |{' ' * bar_start}{'#' * bar_len:<{50 - bar_start}}| "
              f"{(t1 - t0) * 1e3:6.1f} ms")
    pairs = [(a, b) for a in spans for b in spans if a < b
             and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]]
    print(f"  ran at the same time: {', '.join(f'{a}|{b}' for a, b in pairs) or 'nothing'}")
    speedup = busy / wall
    print(f"  wall {wall * 1e3:.1f} ms, busy {busy * 1e3:.1f} ms: parallelism {speedup:.2f}x "
          f"(result checked against a serial run)")
    return speedup


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="depengine demo", description=__doc__)
    p.add_argument("--workers", type=int, default=usable_cores())
    p.add_argument("--n", type=int, default=4096, help="Cholesky matrix size")
    p.add_argument("--tile", type=int, default=512, help="Cholesky tile size")
    p.add_argument("--skip-cholesky", action="store_true")
    p.add_argument("--trace", default=None, help="save a trace of one Cholesky run here")
    p.add_argument("--report", nargs="?", const="depengine-report.html", default=None, metavar="HTML",
                   help="write the HTML report of one Cholesky run (default depengine-report.html)")
    p.add_argument("--train", action="store_true", help="the training demo (ops.autograd, hybridize) instead")
    p.add_argument("--epochs", type=int, default=20, help="--train: epochs")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="--train: where ops/ trains")
    p.add_argument("--svg", default="train-loss.svg", help="--train: the loss curves")
    args = p.parse_args(argv)
    if args.train:
        from .train_demo import main as train_main

        return train_main(["--epochs", str(args.epochs), "--device", args.device, "--svg", args.svg])
    if args.report and args.skip_cholesky:
        p.error("--report reports the Cholesky run: drop --skip-cholesky")
    parallel_demo(args.workers)
    if not args.skip_cholesky:
        from .cholesky_demo import cholesky_demo, heat_demo

        print()
        with tempfile.TemporaryDirectory() as tmp:
            trace = args.trace or (os.path.join(tmp, "trace.json") if args.report else None)
            cholesky_demo(args.n, args.tile, args.workers, trace=trace)
            if args.report:
                import viz

                viz.report(trace, args.report, title=f"depengine demo: tiled Cholesky n={args.n}, "
                                                       f"tile {args.tile}, {args.workers} workers")
                print(f"  wrote {args.report}: open it in a browser (it needs no network)")
        print()
        heat_demo()
    return 0
