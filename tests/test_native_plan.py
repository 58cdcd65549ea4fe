"""Native op bodies in bulks and recorded plans; on the compiled core a plan of native bodies
replays in C (``NativePlan``): the same results, failure rules and profiles as the Python run."""

from __future__ import annotations

import random
import sys
import time

import numba
import numpy as np
import pytest
from numba import types

import depengine as de
from depengine import _compiled, _native
from tests.conftest import ENGINE_CONFIGS, config_id
from tests.test_native import CORES, _serial, bump, step

NATIVE_IN_C = _native._C is not None  # de.native made the compiled core's form (not set aside)


def _program(seed: int, nvars: int, nops: int, native_share: float = 1.0):
    rng = random.Random(seed)
    return [("native" if rng.random() < native_share else "python", rng.randrange(nvars),
             rng.randrange(nvars), rng.randrange(nvars), rng.randrange(1, 9)) for _ in range(nops)]


def _push_program(eng, ops, vs, data, keep):
    for how, dst, s1, s2, c in ops:
        reads = [vs[s1], vs[s2]]
        if how == "native":
            block = np.array([data.ctypes.data, dst, s1, s2, c], np.int64)
            keep.append(block)
            eng.push(de.native(step, block), reads=reads, writes=[vs[dst]], name=f"n{len(keep)}")
        else:
            def body(ctx, dst=dst, s1=s1, s2=s2, c=c):
                with np.errstate(over="ignore"):  # int64 wraps, as in the C body
                    data[dst] = data[s1] + data[s2] + c
            eng.push(body, reads=reads, writes=[vs[dst]])


def _serial_runs(ops, nvars: int, runs: int) -> list[int]:
    data = list(range(nvars))
    for _ in range(runs):
        for _, dst, s1, s2, c in ops:  # int64 arithmetic, wrapping like the C body's
            data[dst] = (data[s1] + data[s2] + c + 2**63) % 2**64 - 2**63
    return data


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("config", ENGINE_CONFIGS, ids=config_id)
@pytest.mark.parametrize("seed,native_share", [(0, 1.0), (1, 1.0), (2, 0.6)])
def test_recorded_native_programs_replay_to_the_serial_result(core, config, seed, native_share):
    kind, workers = config
    nvars, runs = 6, 4
    ops = _program(seed, nvars, 150, native_share)
    data = np.zeros(64, np.int64)
    data[:nvars] = np.arange(nvars)
    keep: list = []
    with de.Engine(kind, workers=workers, core=core) as eng:
        vs = [eng.new_var(f"x{i}") for i in range(nvars)]
        with eng.record(execute=False) as graph:
            _push_program(eng, ops, vs, data, keep)
        plan = graph.compile()
        all_native = native_share == 1.0
        # the C replay exists exactly where it can: every member native, on the compiled core
        assert (plan.native is not None) == (all_native and core == "compiled" and NATIVE_IN_C)
        for _ in range(runs):
            plan.run()
        eng.wait_all()
        versions = [v.version for v in vs]
    assert list(data[:nvars]) == _serial_runs(ops, nvars, runs), f"seed={seed}"
    assert versions == [runs * sum(1 for op in ops if op[1] == i) for i in range(nvars)]


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("kind", ["naive", "threaded", "perdevice"])
def test_native_ops_join_bulks(core, kind):
    nvars = 5
    ops = _program(7, nvars, 200, 0.7)
    data = np.zeros(64, np.int64)
    data[:nvars] = np.arange(nvars)
    keep: list = []
    with de.Engine(kind, workers=2, core=core) as eng:
        vs = [eng.new_var(f"x{i}") for i in range(nvars)]
        with eng.bulk(16):
            _push_program(eng, ops, vs, data, keep)
        eng.wait_all()
        assert [v.version for v in vs] == [sum(1 for op in ops if op[1] == i) for i in range(nvars)]
    assert list(data[:nvars]) == _serial(ops, nvars)


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("kind", ["naive", "threaded", "perdevice"])
def test_a_failing_member_of_a_native_plan_fails_its_writes_and_skips_only_its_dependents(core, kind):
    data = np.zeros(64, np.int64)
    data[:4] = [1, 2, 3, 4]
    with de.Engine(kind, workers=2, core=core) as eng:
        a, b, c, d = (eng.new_var(n) for n in "abcd")
        bad = np.array([data.ctypes.data, 0, 0, 0, -7], np.int64)  # data[0] = 2 * data[0] once fixed
        blocks = [bad, np.array([data.ctypes.data, 1, 0, 1, 0], np.int64),    # b: reads a
                  np.array([data.ctypes.data, 2, 2, 2, 0], np.int64),         # c: independent
                  np.array([data.ctypes.data, 3, 3, 3, 0], np.int64)]         # d: reads a, always runs
        with eng.record(execute=False) as graph:
            eng.push(de.native(step, bad), writes=[a], name="bad")
            eng.push(de.native(step, blocks[1]), reads=[a], writes=[b], name="dependent")
            eng.push(de.native(step, blocks[2]), writes=[c], name="independent")
            eng.push(de.native(step, blocks[3]), reads=[a], writes=[d], name="always", always_run=True)
        plan = graph.compile()
        plan.run()
        with pytest.raises(de.NativeError) as info:
            eng.wait_for_var(a)
        assert info.value.code == -7
        assert any("'bad'" in note for note in info.value.__notes__)
        with pytest.raises(de.NativeError):
            eng.wait_for_var(b)  # skipped: inherits a's failure
        eng.wait_for_var(c)
        eng.wait_for_var(d)
        assert list(data[:4]) == [1, 2, 6, 8]  # b's body never ran; c's and d's did
        bad[4] = 0  # the next run succeeds and clears the failures
        plan.run()
        eng.wait_all()
        assert not a.failed and not b.failed
        assert list(data[:4]) == [2, 4, 12, 16]
        assert [v.version for v in (a, b, c, d)] == [2, 2, 2, 2]


@numba.cfunc(types.int32(types.voidptr), nogil=True)
def enter_then_spin(p):
    """a[0] = 1 (entered), then a[1] rounds of xorshift, their result in a[2]."""
    a = numba.carray(p, (3,), dtype=np.uint64)
    a[0] = 1
    x = np.uint64(0x9E3779B97F4A7C15)
    for _ in range(a[1]):
        x ^= x << np.uint64(13)
        x ^= x >> np.uint64(7)
        x ^= x << np.uint64(17)
    a[2] = x
    return 0


@pytest.mark.skipif(not (_compiled.COMPILED_AVAILABLE and NATIVE_IN_C), reason="the core is not in use")
def test_a_native_plan_replays_while_the_pushing_thread_holds_the_gil():
    width, steps = 4, 50
    counters = [np.zeros(1, np.int64) for _ in range(width)]
    entry = np.array([0, 50_000_000, 0], np.uint64)  # tens of ms: longer than a switch interval
    interval = sys.getswitchinterval()
    with de.Engine("threaded", workers=2) as eng:
        vs = [eng.new_var() for _ in range(width)]
        bodies = [de.native(bump, c) for c in counters]
        with eng.record(execute=False) as graph:
            eng.push(de.native(enter_then_spin, entry), writes=vs, name="entry")
            for _ in range(steps):
                for i in range(width):
                    eng.push(bodies[i], reads=[vs[j] for j in (i - 1, i + 1) if 0 <= j < width],
                             writes=[vs[i]])
        plan = graph.compile()
        assert plan.native is not None and plan.native.chunks > 1
        plan.run()
        deadline = time.monotonic() + 20
        while not entry[0] and time.monotonic() < deadline:
            pass  # the plan op's start (Python) takes the GIL at a switch interval; then C runs on
        sys.setswitchinterval(1000.0)  # from here this thread keeps the GIL while it runs bytecode
        try:
            while counters[-1][0] < steps and time.monotonic() < deadline:
                pass
            reached = [int(c[0]) for c in counters]
        finally:
            sys.setswitchinterval(interval)
        eng.wait_all()
    assert entry[0] == 1
    assert reached == [steps] * width, f"the replay stopped without the GIL: {reached}"


@pytest.mark.parametrize("core", CORES)
def test_a_profiled_native_plan_records_every_member(core):
    counter = np.zeros(1, np.int64)
    with de.Engine("threaded", workers=2, core=core) as eng:
        v = eng.new_var("v")
        with eng.record(execute=False) as graph:
            for _ in range(10):
                eng.push(de.native(bump, counter), writes=[v], name="bump")
        plan = graph.compile()
        plan.run()
        eng.wait_all()
        with de.profile() as prof:
            plan.run()
            eng.wait_all()
        plan.run()
        eng.wait_all()
    assert counter[0] == 30 and v.version == 30
    names = [r.name for r in prof.trace().ops]
    assert names.count("bump") == 10
