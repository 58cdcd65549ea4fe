"""``depengine-native``: the Task Bench graphs with every task a native op body (``de.native``).

Each task is one numba ``cfunc`` call run by the engine's workers without the
GIL: it checks the outputs of the tasks it depends on (each carries its step,
its column and a hash, as in ``taskbench.task_output``), runs the kernel
(busy_wait, compute_bound, memory_bound, load_imbalance or empty: the same
loops as ``bench/kernels.py``) and writes its own output, so a wrong order is
caught by the same validation as every other system.  A check that fails
returns a non-zero code: the op fails and the run raises.

Outputs live in one int64 array per graph, double-buffered by step parity
like the other depengine systems.  Each task's argument block (kernel,
iterations, step, column, seed, its dependencies, the buffers' addresses)
and its ``de.native`` body are built before the clock starts, like the
dependency table; the timed region is pushing every task and waiting.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .kernels import KERNELS, Kernel, _busy_wait, _compute_bound, _memory_bound
from .taskbench import Graph, dependency_table

__all__ = ["run_depengine_native"]

# argument block: kernel, iterations, t, i, seed, ndeps, src address, dst address, scratch address,
# scratch length (doubles), sink (what busy loops store), then the dependencies' columns
_HEAD = 11
_KERNEL_CODES = {name: k for k, name in enumerate(KERNELS)}


@intrinsic
def _ptr(typingctx, address):
    """int64 -> void*: follow an address stored in an argument block."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(types.int64), codegen


@numba.njit(nogil=True, cache=True)
def _spin(kernel, iterations, t, i, scratch):
    """The kernel's work (the Task Bench kernels of bench.kernels, called from compiled code);
    returns a value the caller stores, so no loop is optimised away."""
    if kernel == 1:  # busy_wait
        return np.int64(_busy_wait(iterations) & np.uint64(0x7FFFFFFF))
    if kernel == 2 or kernel == 4:  # compute_bound, load_imbalance
        if kernel == 4:
            h = ((np.uint64(t) * np.uint64(0x9E3779B1)) ^ (np.uint64(i) * np.uint64(0x85EBCA77))) \
                & np.uint64(0xFFFFFFFF)
            iterations = np.int64(iterations * (0.5 + np.float64(h) / 4294967296.0))
        return np.int64(_compute_bound(iterations))
    if kernel == 3:  # memory_bound
        return np.int64(_memory_bound(iterations, scratch))
    return np.int64(0)


@numba.cfunc(types.int32(types.voidptr), nogil=True, cache=True)
def _task(p):
    head = numba.carray(p, (_HEAD,), dtype=np.int64)
    ndeps = head[5]
    block = numba.carray(p, (_HEAD + ndeps,), dtype=np.int64)
    t, i = head[2], head[3]
    src = numba.carray(_ptr(head[6]), (1 << 20,), dtype=np.uint64)  # (column, 3) records; indexed below
    dst = numba.carray(_ptr(head[7]), (1 << 20,), dtype=np.uint64)
    acc = np.uint64(head[4]) ^ np.uint64(t)
    for k in range(ndeps):
        j = block[_HEAD + k]
        if src[3 * j] != np.uint64(t - 1) or src[3 * j + 1] != np.uint64(j):
            return 1000 + k  # an input that is not the output of task (t - 1, j): a wrong order
        acc = acc * np.uint64(0x100000001B3) + src[3 * j + 2]
    scratch = numba.carray(_ptr(head[8]), (head[9],), dtype=np.float64)
    head[10] = _spin(head[0], head[1], t, i, scratch)
    dst[3 * i] = np.uint64(t)
    dst[3 * i + 1] = np.uint64(i)
    dst[3 * i + 2] = acc
    return 0


def run_depengine_native(graphs: list[Graph], kernel: Kernel, workers: int, kind: str = "threaded"):
    """Run ``graphs`` with every task a native op on a ``kind`` engine; a ``systems.Run``."""
    import depengine as de

    from .systems import Run, _last_outputs

    code = _KERNEL_CODES[kernel.name]
    steps = max(g.steps for g in graphs)
    by_step: list[list] = [[] for _ in range(steps)]
    with de.Engine(kind, workers=workers) as eng:
        plans = []
        for g in graphs:
            table = dependency_table(g)
            outs = np.zeros((2, g.width, 3), np.uint64)  # step parity, column, (t, i, hash)
            scratch = np.zeros((2, g.width, max(2, kernel.scratch_bytes // 8)))  # one per parity and column
            vs = ([eng.new_var(f"g{g.index}b0c{i}") for i in range(g.width)],
                  [eng.new_var(f"g{g.index}b1c{i}") for i in range(g.width)])
            blocks = []
            for t in range(g.steps):
                for i in g.points(t):
                    deps = table[t][i]
                    block = np.zeros(_HEAD + len(deps), np.int64)
                    block[:_HEAD] = (code, kernel.iterations, t, i, np.uint64(g.seeds[i]).view(np.int64),
                                     len(deps), outs[(t - 1) % 2].ctypes.data, outs[t % 2].ctypes.data,
                                     scratch[t % 2, i].ctypes.data, scratch.shape[2], 0)
                    block[_HEAD:] = deps
                    blocks.append(block)
                    by_step[t].append((de.native(_task, block), [vs[(t - 1) % 2][j] for j in deps],
                                       (vs[t % 2][i],)))
            plans.append((g, outs, blocks))
        push = eng.push
        start = time.perf_counter()
        for row in by_step:
            for body, reads, writes in row:
                push(body, reads, writes)
        eng.wait_all()
        seconds = time.perf_counter() - start
        last = {g.index: _last_outputs(g, lambda t, i, outs=outs: tuple(int(x) for x in outs[t % 2, i]))
                for g, outs, _ in plans}
    return Run(seconds, last, sum(g.ntasks() for g in graphs))
