"""Task Bench across MPI ranks: depengine's mpi engine, and a hand-written mpi4py reference.

Two benchmark systems (see bench/systems.py), each run as ``mpiexec -n R``
with R = the suite's ``workers``, one core per rank:

``depengine-mpi``
    every rank pushes the whole graph to ``Engine("mpi", workers=1)``; column
    i of width W belongs to rank ``i * R // W`` (contiguous blocks, as in Task
    Bench's MPI implementation); each task reads its dependencies' outputs
    from var buffers (double-buffered by step parity) and writes its own; the
    engine moves the outputs that cross ranks.
``mpi4py``
    Task Bench's MPI reference written by hand with mpi4py: per step, every
    rank posts the receives of the remote outputs its tasks read and the sends
    of its outputs that remote tasks read, waits for them all, then runs its
    tasks.  No scheduler: the floor for Python over MPI on this machine.

Both validate every task's inputs (``task_output``), return every column's
last output for the suite's serial check, and time from a barrier to the end
of the last task on every rank.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .kernels import Kernel
from .taskbench import Graph, dependency_table, task_output

__all__ = ["launch", "run_depengine_mpi", "run_mpi4py"]

ROOT = Path(__file__).resolve().parent.parent


def _owner(i: int, width: int, ranks: int) -> int:
    return i * ranks // width


def _last_points(g: Graph) -> dict[int, int]:
    last = {}
    for t in range(g.steps):
        for i in g.points(t):
            last[i] = t
    return last


# ------------------------------------------------------------------- depengine
def _task(g, t, i, deps, kernel, src, dst, ctx) -> None:
    kernel.run(t, i)
    out = dst[i]
    out[:] = task_output(g, t, i, deps, [(int(s[0]), int(s[1]), int(s[2])) for s in (src[j] for j in deps)])


def run_depengine_mpi(graphs: list[Graph], kernel: Kernel) -> dict | None:
    """One run on this rank; rank 0 returns the result."""
    import functools

    import depengine as de

    eng = de.Engine("mpi", workers=1)
    size = eng.size
    cols = []
    for g in graphs:
        bufs = tuple([np.zeros(3, np.uint64) for _ in range(g.width)] for _ in (0, 1))
        vs = tuple([eng.new_var(f"g{g.index}b{b}c{i}", owner=_owner(i, g.width, size), buffer=bufs[b][i],
                                uninitialized=True) for i in range(g.width)] for b in (0, 1))
        cols.append((g, dependency_table(g), bufs, vs))
    token = eng.new_var("token", buffer=np.zeros(1))
    eng.fetch(token)  # every rank starts together
    push, partial = eng.push, functools.partial
    start = time.perf_counter()
    for t in range(max(g.steps for g in graphs)):
        for g, table, bufs, vs in cols:
            if t >= g.steps:
                continue
            src, dst, srcv, dstv = bufs[(t - 1) % 2], bufs[t % 2], vs[(t - 1) % 2], vs[t % 2]
            row = table[t]
            for i in g.points(t):
                deps = row[i]
                push(partial(_task, g, t, i, deps, kernel, src, dst), [srcv[j] for j in deps], (dstv[i],),
                     "task")
    eng.wait_all()
    eng.fetch(token)  # every rank's tasks are done
    seconds = time.perf_counter() - start
    outputs = {}
    for g, _, _, vs in cols:
        outputs[g.index] = {i: [int(x) for x in eng.fetch(vs[t % 2][i])] for i, t in _last_points(g).items()}
    traffic = eng.traffic()
    eng.close()
    return {"seconds": seconds, "outputs": outputs, "traffic": traffic} if eng.rank == 0 else None


# -------------------------------------------------------------------- mpi4py
def run_mpi4py(graphs: list[Graph], kernel: Kernel) -> dict | None:
    """Task Bench's MPI pattern by hand: exchange what crosses ranks, then compute, step by step."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD.Dup()
    rank, size = comm.Get_rank(), comm.Get_size()
    plans = []
    for g in graphs:
        table = dependency_table(g)
        mine = [i for i in range(g.width) if _owner(i, g.width, size) == rank]
        plans.append((g, table, mine, {}, {}))  # graph, table, my columns, outputs at t-1, last outputs
    comm.Barrier()
    start = time.perf_counter()
    for t in range(max(g.steps for g in graphs)):
        reqs, inbox, keep = [], {}, []
        for g, table, mine, prev, _ in plans:
            if t >= g.steps or t == 0:
                continue
            points = g.points(t)
            wanted = {j for i in mine if i in points for j in table[t][i] if _owner(j, g.width, size) != rank}
            for j in sorted(wanted):
                buf = np.empty(3, np.uint64)
                inbox[g.index, j] = buf
                reqs.append(comm.Irecv(buf, _owner(j, g.width, size), g.index * g.width + j))
            dests = {}
            for i in points:
                for j in table[t][i]:
                    if j in prev and _owner(i, g.width, size) != rank:
                        dests.setdefault(j, set()).add(_owner(i, g.width, size))
            for j, ranks in sorted(dests.items()):
                out = np.array(prev[j], np.uint64)
                keep.append(out)
                reqs.extend(comm.Isend(out, r, g.index * g.width + j) for r in sorted(ranks))
        MPI.Request.Waitall(reqs)
        for g, table, mine, prev, last in plans:
            if t >= g.steps:
                continue
            points = g.points(t)
            cur = {}
            for i in mine:
                if i in points:
                    deps = table[t][i]
                    kernel.run(t, i)
                    inputs = [prev[j] if j in prev else tuple(int(x) for x in inbox[g.index, j])
                              for j in deps]
                    cur[i] = last[i] = task_output(g, t, i, deps, inputs)
            prev.clear()
            prev.update(cur)
    comm.Barrier()
    seconds = time.perf_counter() - start
    from depengine.mpi.transfers import allgather_json

    parts = allgather_json(MPI, comm, json.dumps({g.index: last for g, _, _, _, last in plans}).encode())
    comm.Free()
    if rank != 0:
        return None
    outputs = {g.index: {} for g in graphs}
    for part in parts:
        for gi, last in part.items():
            outputs[int(gi)].update({int(i): list(v) for i, v in last.items()})
    return {"seconds": seconds, "outputs": outputs}


# ---------------------------------------------------------------- the launcher
RUNNERS = {"depengine-mpi": run_depengine_mpi, "mpi4py": run_mpi4py}


def launch(system: str, graphs: list[Graph], kernel: Kernel, ranks: int):
    """Run ``system`` on ``ranks`` ranks; a :class:`bench.systems.Run` (start-up not timed)."""
    from .systems import Run

    spec = json.dumps({"system": system, "graphs": [asdict(g) for g in graphs], "kernel": asdict(kernel)})
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "bench.mpi_taskbench", spec]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            outputs = {int(gi): {int(i): tuple(v) for i, v in cols.items()}
                       for gi, cols in r["outputs"].items()}
            return Run(r["seconds"], outputs, sum(g.ntasks() for g in graphs))
    raise RuntimeError(f"{system} on {ranks} ranks failed (exit {out.returncode}):\n{out.stdout[-2000:]}\n"
                       f"{out.stderr[-3000:]}")


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    graphs = [Graph(**{k: v for k, v in g.items() if k != "seeds"}) for g in spec["graphs"]]
    kernel = Kernel(**spec["kernel"])
    kernel.warm_up()
    result = RUNNERS[spec["system"]](graphs, kernel)
    if result is not None:
        print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
