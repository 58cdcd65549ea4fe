"""Part 2 of the demo: a tiled Cholesky through the engine, against NumPy's LAPACK and dask.

    python -m bench.cholesky_demo [--n 4096] [--tile 512] [--repeats 3] [--trace trace.json]

Factors one SPD matrix three ways in the same run: ``ops.linalg.cholesky``
(a task graph of POTRF/TRSM/SYRK/GEMM tile ops on the engine, one BLAS
thread per worker), ``numpy.linalg.cholesky`` (LAPACK with all the machine's
BLAS threads) and ``dask.array.linalg.cholesky`` (same tile size, threaded
scheduler).  Each time is the median of ``--repeats`` runs; every result is
checked against NumPy's factor.  Then the 2-d heat equation over tiles.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import depengine as de
import ops as nd
from scheduler import usable_cores

__all__ = ["cholesky_demo"]


def spd_matrix(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n))
    return x @ x.T / n + np.eye(n)


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def cholesky_demo(n: int = 4096, tile: int = 512, workers: int | None = None, repeats: int = 3,
                  trace: str | None = None) -> dict:
    workers = workers or usable_cores()
    flops = n**3 / 3
    s = spd_matrix(n)
    results = {}
    eng = de.Engine("perdevice", workers=workers)
    nd.set_engine(eng)
    try:
        a = nd.array(s)
        nd.linalg.cholesky(nd.array(spd_matrix(2 * 64 + 7)), tile=64).wait_to_read()  # compile the kernels

        def ours():
            return nd.linalg.cholesky(a, tile=tile).wait_to_read()
        t, l_ours = _median_time(ours, repeats)
        if trace:
            with de.profile() as prof:
                ours()
            prof.save(trace)
    finally:
        nd.set_engine(None)
        eng.close()
        nd.linalg.blas_threads(None)  # back to all BLAS threads for the peers
    want = np.linalg.cholesky(s)
    results["depengine"] = (t, _rel_error(l_ours.asnumpy(), want))
    with threadpool_limits(limits=usable_cores(), user_api="blas"):
        t_np, l_np = _median_time(lambda: np.linalg.cholesky(s), repeats)
    results["numpy.linalg"] = (t_np, _rel_error(l_np, want))
    try:
        import dask
        import dask.array as da

        x = da.from_array(s, chunks=tile)
        with dask.config.set(scheduler="threads", num_workers=workers):
            t_da, l_da = _median_time(lambda: da.linalg.cholesky(x, lower=True).compute(), repeats)
        results["dask.array"] = (t_da, _rel_error(l_da, want))
    except ImportError:
        pass
    print(f"part 2: Cholesky of an SPD {n}x{n} matrix, tile {tile}, {workers} worker(s), "
          f"median of {repeats} runs (n^3/3 flops)")
    for name, (secs, err) in results.items():
        print(f"  {name:14s} {secs:8.3f} s {flops / secs / 1e9:7.1f} GFLOP/s   max rel. error {err:.1e}")
    ours_t = results["depengine"][0]
    print(f"  depengine vs numpy.linalg.cholesky: {results['numpy.linalg'][0] / ours_t:.2f}x", end="")
    if "dask.array" in results:
        print(f", vs dask.array: {results['dask.array'][0] / ours_t:.2f}x")
    else:
        print(" (dask not installed)")
    bad = {k: e for k, (_, e) in results.items() if not e < 1e-10}
    if bad:
        raise SystemExit(f"Cholesky results differ from NumPy's beyond 1e-10: {bad}")
    if trace:
        print(f"  trace of one depengine run written to {trace}")
    return results


def heat_demo(n: int = 1024, steps: int = 50, tile: int = 256) -> None:
    u0 = np.random.default_rng(1).random((n, n))
    t0 = time.perf_counter()
    got = nd.stencil.heat2d(nd.array(u0), steps, tile=tile).asnumpy()
    t = time.perf_counter() - t0
    t0 = time.perf_counter()
    want = nd.stencil.heat2d_reference(u0, steps)
    t_ref = time.perf_counter() - t0
    ok = np.allclose(got, want, rtol=0, atol=1e-12)
    print(f"part 3: heat equation {n}x{n}, {steps} steps, {tile}x{tile} tiles: {t:.3f} s "
          f"(whole-grid NumPy: {t_ref:.3f} s), result {'matches' if ok else 'DIFFERS from'} NumPy")
    if not ok:
        raise SystemExit("heat equation result differs from the NumPy reference")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trace", default=None)
    args = p.parse_args(argv)
    cholesky_demo(args.n, args.tile, args.workers, args.repeats, args.trace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
