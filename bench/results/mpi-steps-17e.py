"""Per-step cost of Task Bench's stencil_1d (8 columns) on 2 ranks of Engine("mpi", workers=1), and the
CPU each of a rank's threads used, from /proc (issue 17, 2026-12-02).

    mpiexec -n 2 python bench/results/mpi-steps-17e.py CHECKOUT STEPS ITERATIONS

CHECKOUT is the repository to import depengine from (to compare commits in turns); ITERATIONS of
busy_wait per task (0: empty tasks).  Each rank prints µs per step (wall) and its threads' CPU per step.
"""
import functools
import os
import sys
import threading
import time

sys.path.insert(0, sys.argv[1])
import numpy as np

import depengine as de
from bench.kernels import Kernel
from bench.mpi_taskbench import _owner, _task
from bench.taskbench import Graph, dependency_table


def threads():
    names = {str(t.native_id): t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            s = f.read()
        parts = s[s.rindex(")") + 2:].split()
        out[names.get(tid, tid)] = (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    return out


steps, iters = int(sys.argv[2]), int(sys.argv[3])
g = Graph("stencil_1d", 8, steps)
kernel = Kernel("busy_wait" if iters else "empty", iters)
kernel.warm_up()
eng = de.Engine("mpi", workers=1)
table = dependency_table(g)
bufs = tuple([np.zeros(3, np.uint64) for _ in range(g.width)] for _ in (0, 1))
vs = tuple([eng.new_var(f"b{b}c{i}", owner=_owner(i, g.width, eng.size), buffer=bufs[b][i],
                        uninitialized=True) for i in range(g.width)] for b in (0, 1))
token = eng.new_var("token", buffer=np.zeros(1))
eng.fetch(token)
before = threads()
start = time.perf_counter()
for t in range(steps):
    src, dst, srcv, dstv = bufs[(t - 1) % 2], bufs[t % 2], vs[(t - 1) % 2], vs[t % 2]
    for i in g.points(t):
        deps = table[t][i]
        eng.push(functools.partial(_task, g, t, i, deps, kernel, src, dst), [srcv[j] for j in deps],
                 (dstv[i],), "task")
eng.wait_all()
eng.fetch(token)
wall = time.perf_counter() - start
after = threads()
cpu = " ".join(f"{k.replace('depengine-', '')} {(after[k] - before.get(k, 0)) * 1e6 / steps:.0f}"
               for k in after if after[k] - before.get(k, 0) > 0)
print(f"rank {eng.rank}: {wall * 1e6 / steps:.1f} us/step; CPU us/step: {cpu}", flush=True)
eng.close()
