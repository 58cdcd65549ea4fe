"""What one op costs across ranks, measured for docs/SCALING.md.

    python -m bench.mpi_scaling [--ranks 2 3] [--n 3072] [--tile 512]

For each number of ranks, one ``mpiexec`` run measures on every rank:

- the cost of a push on a rank that has no part in the op (it only updates
  its copy of the plan: owner, version, holders, hash) against one that runs
  the op, per push;
- the latency of one hop through the engine (an op on one rank reads what an
  op on another wrote: two ping-pong ops per round trip) against a bare
  mpi4py ping-pong of the same 8 bytes;
- messages and bytes per op, from the merged trace of a profiled tiled
  Cholesky (block-cyclic, ``--n``, ``--tile``) and a stencil_1d Task Bench
  graph (8 columns, 200 steps).
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]


def _push_costs(eng) -> dict:
    """Microseconds per push of an op on rank 0's vars: on rank 0, which runs it, and on rank 1,
    which has no part in it (every rank pushes the same ops)."""
    bufs = [np.zeros(1), np.zeros(1)]
    pair = [eng.new_var(f"p{i}", owner=0, buffer=bufs[i]) for i in range(2)]
    n = 20000
    eng.wait_all()
    start = time.perf_counter()
    for _ in range(n):
        eng.push(_nothing, [pair[0]], [pair[1]], "bench")
    mine = (time.perf_counter() - start) / n * 1e6
    eng.wait_all()
    box = np.zeros(1)
    other = eng.new_var("skip cost", owner=min(1, eng.size - 1), buffer=box)
    eng.push(lambda ctx: box.__setitem__(0, mine), writes=[other], name="report")  # runs on rank 1
    return {"local push": mine, "skipped push": float(eng.fetch(other)[0])}


def _nothing(ctx) -> None:
    pass


def _hop_latency(eng, MPI) -> dict:
    if eng.size < 2:
        return {}
    a, b = np.zeros(1), np.zeros(1)
    va, vb = eng.new_var("ping", owner=0, buffer=a), eng.new_var("pong", owner=1, buffer=b)

    def fa(ctx):
        a[0] = b[0] + 1

    def fb(ctx):
        b[0] = a[0] + 1
    rounds = 500
    eng.fetch(va)
    start = time.perf_counter()
    for _ in range(rounds):
        eng.push(fb, [va], [vb], "pong")
        eng.push(fa, [vb], [va], "ping")
    eng.fetch(va)
    engine_hop = (time.perf_counter() - start) / (2 * rounds) * 1e6
    comm, me = MPI.COMM_WORLD, eng.rank
    buf = np.zeros(1)
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(rounds):
        if me == 0:
            comm.Send(buf, 1, 9)
            comm.Recv(buf, 1, 9)
        elif me == 1:
            comm.Recv(buf, 0, 9)
            comm.Send(buf, 0, 9)
    mpi_hop = (time.perf_counter() - start) / (2 * rounds) * 1e6
    comm.Barrier()
    return {"engine hop": engine_hop, "mpi4py hop": mpi_hop}


def _per_op(trace) -> dict:
    user = [r for r in trace.ops if not r.name.startswith("mpi ") and r.state != "skipped"]
    moved = trace.transfers
    nbytes = sum(t["bytes"] for t in moved)
    return {"ops": len(user), "messages": len(moved), "bytes": nbytes,
            "messages per op": len(moved) / max(1, len(user)), "bytes per op": nbytes / max(1, len(user))}


def rank_main(n: int, tile: int) -> dict:
    from mpi4py import MPI

    import depengine as de
    import ops as nd
    from bench.kernels import Kernel
    from bench.mpi_taskbench import _owner, _task
    from bench.taskbench import Graph, dependency_table

    eng = de.Engine("mpi", workers=1)
    result = {"ranks": eng.size}
    result.update(_push_costs(eng))
    result.update(_hop_latency(eng, MPI))
    nd.set_engine(eng)
    x = np.random.default_rng(0).random((n, n))
    a = nd.array((x + x.T) / 2 + n * np.eye(n))
    eng.wait_all()
    with de.profile() as prof:
        factor = nd.linalg.cholesky(a, tile=tile)
        eng.wait_all()
    merged = eng.gather_trace(prof)
    if merged is not None:
        result["cholesky"] = _per_op(merged)
    del factor, a
    nd.set_engine(None)
    g, kernel = Graph("stencil_1d", 8, 200), Kernel("empty")
    table = dependency_table(g)
    bufs = tuple([np.zeros(3, np.uint64) for _ in range(g.width)] for _ in (0, 1))
    vs = tuple([eng.new_var(f"s{b}c{i}", owner=_owner(i, g.width, eng.size), buffer=bufs[b][i],
                            uninitialized=True) for i in range(g.width)] for b in (0, 1))
    eng.wait_all()
    with de.profile() as prof:
        for t in range(g.steps):
            src, dst = bufs[(t - 1) % 2], bufs[t % 2]
            for i in range(g.width):
                deps = table[t][i]
                fn = functools.partial(_task, g, t, i, deps, kernel, src, dst)
                eng.push(fn, [vs[(t - 1) % 2][j] for j in deps], (vs[t % 2][i],), "task")
        eng.wait_all()
    merged = eng.gather_trace(prof)
    if merged is not None:
        result["stencil_1d"] = _per_op(merged)
    eng.close()
    return result if eng.rank == 0 else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 3])
    p.add_argument("--n", type=int, default=3072)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--rank-run", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rank_run:
        result = rank_main(args.n, args.tile)
        if result is not None:
            print("RESULT " + json.dumps(result), flush=True)
        return 0
    print(f"mpi scaling figures, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    for ranks in args.ranks:
        cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "bench.mpi_scaling", "--rank-run", "--n",
               str(args.n), "--tile", str(args.tile)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                             cwd=Path(__file__).resolve().parent.parent)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if not lines:
            raise SystemExit(f"{ranks} ranks failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        r = json.loads(lines[0][7:])
        print(f"\n{ranks} ranks")
        for key in ("skipped push", "local push", "engine hop", "mpi4py hop"):
            if key in r:
                print(f"  {key:14s} {r[key]:8.1f} us")
        for workload in ("cholesky", "stencil_1d"):
            w = r[workload]
            print(f"  {workload:10s} {w['ops']:6d} ops, {w['messages']:6d} messages, "
                  f"{w['bytes'] / 2**20:8.1f} MiB: {w['messages per op']:.3f} messages and "
                  f"{w['bytes per op'] / 1024:.1f} KiB per op")
    return 0


if __name__ == "__main__":
    sys.exit(main())
