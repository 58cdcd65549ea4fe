"""Per-device engine, CPU side: real parallelism, prioritized and copy pools."""

from __future__ import annotations

import threading

import numba
import numpy as np
import pytest

import depengine as de
from tests.conftest import Gate


@numba.njit(nogil=True, cache=True)
def spin(n):
    acc = 0.0
    for i in range(n):
        acc = acc * 0.999999 + i * 1e-9
    return acc


def _spans(trace):
    return sorted((r.start, r.end, r.name) for r in trace.ops)


@pytest.fixture(scope="module")
def long_iterations():
    """Iterations for a kernel of about 100 ms on this machine."""
    import time

    spin(1000)
    t = time.perf_counter()
    spin(2_000_000)
    per = (time.perf_counter() - t) / 2_000_000
    return max(100_000, int(0.1 / per))


@pytest.mark.parametrize("kind", ["perdevice", "threaded"])
def test_two_long_numba_ops_overlap_on_two_workers(kind, long_iterations):
    with de.profile() as prof, de.Engine(kind, workers=2) as eng:
        for k in range(2):
            eng.push(lambda ctx: spin(long_iterations), writes=[eng.new_var()], name=f"spin{k}")
        eng.wait_all()
    (s0, e0, _), (s1, e1, _) = _spans(prof.trace())
    overlap = min(e0, e1) - max(s0, s1)
    assert overlap > 0.5 * min(e0 - s0, e1 - s1), "the two nogil kernels did not run at the same time"


def test_with_one_worker_they_serialize(long_iterations):
    with de.profile() as prof, de.Engine("perdevice", workers=1) as eng:
        for k in range(2):
            eng.push(lambda ctx: spin(long_iterations // 4), writes=[eng.new_var()], name=f"spin{k}")
        eng.wait_all()
    (_, e0, _), (s1, _, _) = _spans(prof.trace())
    assert e0 <= s1


def test_prioritized_ops_start_before_the_normal_backlog():
    gate = Gate()
    order = []
    all_prio_ran = threading.Event()

    def prio(ctx, i):
        order.append(f"prio{i}")
        if i == 2:
            all_prio_ran.set()

    with de.Engine("perdevice", workers=1, prioritized_workers=1) as eng:
        eng.push(gate, name="busy")
        assert gate.started.wait(10)
        for i in range(5):
            eng.push(lambda ctx, i=i: order.append(f"normal{i}"), name=f"normal{i}")
        for i in range(3):
            eng.push(lambda ctx, i=i: prio(ctx, i), kind="prioritized", name=f"prio{i}")
        # the only normal worker is still blocked, yet the prioritized ops ran
        assert all_prio_ran.wait(10)
        gate.open()
        eng.wait_all()
    assert order == ["prio0", "prio1", "prio2"] + [f"normal{i}" for i in range(5)]


def test_prioritized_without_a_pool_ranks_first_in_the_normal_queue():
    gate = Gate()
    order = []
    with de.Engine("perdevice", workers=1, prioritized_workers=0) as eng:
        eng.push(gate, name="busy")
        assert gate.started.wait(10)
        for i in range(3):
            eng.push(lambda ctx, i=i: order.append(f"normal{i}"))
        eng.push(lambda ctx: order.append("prio"), kind="prioritized", priority=5)
        gate.open()
        eng.wait_all()
    assert order == ["prio", "normal0", "normal1", "normal2"]


def test_copy_ops_run_on_copy_workers():
    names = []
    with de.Engine("perdevice", workers=1, copy_workers=2) as eng:
        src, dst = np.arange(10.0), np.zeros(10)
        a, b = eng.new_var("a"), eng.new_var("b")
        eng.push(lambda ctx: (np.copyto(dst, src), names.append(ctx.stream)), reads=[a], writes=[b],
                 kind="copy")
        eng.wait_all()
        assert np.array_equal(dst, src) and names == [None]
        assert len([t for t in eng.threads() if t.name.startswith("depengine-copy")]) == 2
