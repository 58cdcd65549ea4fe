"""Tiled Cholesky on 2 MPI ranks against one process, in the same run (issue 17's target).

    python -m bench.mpi_cholesky [--n 6144] [--tile 512] [--repeats 3] [--json out.json]

Each configuration runs in a process (or ranks) of its own, factoring the
same SPD matrix with ``ops.linalg.cholesky``; the configurations take turns,
``--repeats`` rounds, so that the machine's drift hits them alike:

- ``1 rank x 1 worker``: ``Engine("mpi", workers=1)`` in a world of one;
- ``1 process x 2 workers``: ``Engine("threaded", workers=2)``;
- ``2 ranks x 1 worker``: ``mpiexec -n 2``, ``Engine("mpi", workers=1)``, the
  tiles block-cyclic over a 1 x 2 grid.

The time is that of ``cholesky(a)`` until every rank's ops are done (the
input cut into tiles and sent to their ranks, the factorization, the factor
assembled on rank 0), after a warm-up; each result is checked against NumPy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]

CONFIGS = {  # name -> (ranks, engine kind, workers)
    "1 rank x 1 worker": (1, "mpi", 1),
    "1 process x 2 workers": (1, "threaded", 2),
    "2 ranks x 1 worker": (2, "mpi", 1),
}


def spd(n: int) -> np.ndarray:
    """A symmetric, diagonally dominant (so positive definite) matrix, cheap to build."""
    x = np.random.default_rng(0).random((n, n))
    return (x + x.T) / 2 + n * np.eye(n)


def rank_main(n: int, tile: int, kind: str, workers: int, trace: str | None = None) -> dict:
    """One configuration's run, on every rank; rank 0's dict is the result."""
    import depengine as de
    import ops as nd

    eng = de.Engine(kind, workers=workers)
    nd.set_engine(eng)
    try:
        s = spd(n)
        nd.linalg.cholesky(nd.array(spd(300)), tile=64).asnumpy()  # compile and load the kernels
        a = nd.array(s)
        eng.wait_all()
        if kind == "mpi":
            eng.fetch(eng.new_var("barrier", buffer=np.zeros(1)))  # every rank starts together
        prof = de.profile().start() if trace else None
        start = time.perf_counter()
        factor = nd.linalg.cholesky(a, tile=tile)
        eng.wait_all()
        seconds = time.perf_counter() - start
        if prof is not None:
            prof.stop()
            merged = eng.gather_trace(prof) if kind == "mpi" else prof.trace()
            if merged is not None:
                merged.save(trace)
        got = factor.asnumpy()
        error = float(np.abs(got - np.linalg.cholesky(s)).max() / np.abs(got).max())
        traffic = eng.traffic() if kind == "mpi" else {}
        del factor, a
    finally:
        nd.set_engine(None)
        eng.close()
    return {"seconds": seconds, "error": error, "rank": getattr(eng, "rank", 0), "traffic": traffic}


def _launch(config: str, n: int, tile: int) -> dict:
    ranks, kind, workers = CONFIGS[config]
    program = [sys.executable, "-m", "bench.mpi_cholesky", "--rank-run", kind, str(workers), "--n", str(n),
               "--tile", str(tile)]
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    cmd = program if ranks == 1 else [mpiexec, "-n", str(ranks), *program]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                         cwd=Path(__file__).resolve().parent.parent)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit(f"{config} failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=6144)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    p.add_argument("--trace", default=None, help="run 2 ranks once, profiled, and save the merged trace here")
    p.add_argument("--rank-run", nargs=2, metavar=("KIND", "WORKERS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rank_run:
        result = rank_main(args.n, args.tile, args.rank_run[0], int(args.rank_run[1]), args.trace)
        if result["rank"] == 0:  # one line: the ranks share stdout
            print("RESULT " + json.dumps(result), flush=True)
        return 0
    if args.trace:
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", "2", sys.executable, "-m",
               "bench.mpi_cholesky", "--rank-run", "mpi", "1", "--n", str(args.n), "--tile", str(args.tile),
               "--trace", args.trace]
        subprocess.run(cmd, check=True, timeout=1800)
        return 0
    print(f"tiled Cholesky n={args.n} tile={args.tile}, {args.repeats} rounds, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}", flush=True)
    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for k in range(args.repeats):
        for config in CONFIGS:
            r = _launch(config, args.n, args.tile)
            if not r["error"] < 1e-10:
                raise SystemExit(f"{config}: the factor differs from NumPy's ({r['error']:.1e})")
            runs[config].append(r)
            print(f"  round {k + 1}: {config:22s} {r['seconds']:7.3f} s", flush=True)
    med = {c: statistics.median(r["seconds"] for r in rs) for c, rs in runs.items()}
    one, two_w, two_r = (med[c] for c in CONFIGS)
    print(f"\n{'configuration':24s} {'median s':>9s}  {'GFLOP/s':>8s}")
    for c in CONFIGS:
        print(f"{c:24s} {med[c]:9.3f}  {args.n ** 3 / 3 / med[c] / 1e9:8.1f}")
    rounds = [(r1["seconds"] / r2["seconds"], r2w["seconds"] / r2["seconds"])
              for r1, r2w, r2 in zip(*runs.values(), strict=True)]
    print(f"2 ranks vs 1 rank x 1 worker: {one / two_r:.2f}x (target >= 1.6; per round "
          f"{', '.join(f'{a:.2f}' for a, _ in rounds)})")
    print(f"2 ranks vs 1 process x 2 workers: {two_w / two_r:.2f}x (target >= 0.8; per round "
          f"{', '.join(f'{b:.2f}' for _, b in rounds)})")
    traffic = runs["2 ranks x 1 worker"][0]["traffic"]
    print(f"rank 0 traffic: {traffic}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "tile": args.tile, "runs": runs, "median": med}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
