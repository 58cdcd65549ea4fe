"""``static-threads``: the graphs run by hand-written threads with no scheduler at all.

Not a tool anyone would pick; it answers "how fast could a Python scheduler
be on this machine?".  Before the clock starts, each graph's columns are
split into ``workers`` contiguous blocks, one thread per block, and each
thread orders its columns so that the ones other threads read come first
(their outputs are ready early).  Then every thread walks the steps in
order and runs its tasks; before a task it waits only for what it needs:
the outputs of its dependencies (read-after-write) and, since outputs are
double-buffered by step parity, for the readers of the value it is about to
overwrite (write-after-read).  Waits are on one condition variable that a
finishing task notifies only while someone waits.  No queues, no dispatch,
no per-task bookkeeping beyond one integer per column: what is left is the
task body, the kernel and the GIL.
"""

from __future__ import annotations

import threading
import time

from .kernels import Kernel
from .taskbench import Graph, dependency_table

__all__ = ["run_static_threads"]


class _Cells:
    """Every (graph, column) of a run, the block (thread) owning each, and who reads whom."""

    def __init__(self, graphs: list[Graph], workers: int) -> None:
        self.graphs = graphs
        self.tables = [dependency_table(g) for g in graphs]
        cells = [(k, i) for k, g in enumerate(graphs) for i in range(g.width)]
        nthreads = max(1, min(workers, len(cells)))
        self.owner = {cell: n * nthreads // len(cells) for n, cell in enumerate(cells)}
        # readers[k][t][i]: the columns of step t that read column i of step t - 1
        self.readers = []
        for g, table in zip(graphs, self.tables, strict=True):
            per_step = [[[] for _ in range(g.width)] for _ in range(g.steps)]
            for t in range(1, g.steps):
                for j in g.points(t):
                    for i in table[t][j]:
                        per_step[t][i].append(j)
            self.readers.append(per_step)
        self.blocks = []
        for n in range(nthreads):
            mine = [c for c in cells if self.owner[c] == n]
            self.blocks.append(sorted(mine, key=lambda c, n=n: -self._read_by_others(c, n)))

    def _read_by_others(self, cell, n: int) -> int:
        k, i = cell
        return sum(1 for step in self.readers[k] for j in step[i] if self.owner[k, j] != n)


def run_static_threads(graphs: list[Graph], kernel: Kernel, workers: int):
    from .systems import Run, _last_outputs, _task

    cells = _Cells(graphs, workers)
    bufs = [([None] * g.width, [None] * g.width) for g in graphs]
    last = [[-1] * g.width for g in graphs]  # the last step done, per column
    cond = threading.Condition()
    waiting = [0]
    errors: list[BaseException] = []
    steps = max(g.steps for g in graphs)

    def wait_for(done: list[int], columns, step: int) -> None:
        for j in columns:
            if done[j] < step:
                with cond:
                    waiting[0] += 1  # before the check: a finishing task then notifies
                    while done[j] < step and not errors:
                        cond.wait()
                    waiting[0] -= 1

    def thread(block, start: threading.Barrier) -> None:
        start.wait()
        try:
            for t in range(steps):
                for k, i in block:
                    g = graphs[k]
                    if t >= g.steps or i not in g.points(t):
                        continue
                    done = last[k]
                    deps = cells.tables[k][t][i]
                    wait_for(done, deps, t - 1)
                    if t >= 2:  # the readers of (t - 2, i), whose buffer this task overwrites
                        wait_for(done, cells.readers[k][t - 1][i], t - 1)
                    src, dst = bufs[k][(t - 1) % 2], bufs[k][t % 2]
                    dst[i] = _task(g, t, i, deps, kernel, [src[j] for j in deps])
                    done[i] = t
                    if waiting[0]:
                        with cond:
                            cond.notify_all()
        except BaseException as exc:
            errors.append(exc)
            with cond:
                cond.notify_all()

    start = threading.Barrier(len(cells.blocks) + 1)
    threads = [threading.Thread(target=thread, args=(b, start), name=f"static-{n}", daemon=True)
               for n, b in enumerate(cells.blocks)]
    for th in threads:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    outputs = {g.index: _last_outputs(g, lambda t, i, b=b: b[t % 2][i])
               for g, b in zip(graphs, bufs, strict=True)}
    return Run(seconds, outputs, sum(g.ntasks() for g in graphs))
