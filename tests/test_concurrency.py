"""Many pushing threads, close with pending work, fork, the default engine."""

from __future__ import annotations

import multiprocessing
import random
import threading

import pytest

import depengine as de
from tests.conftest import Gate
from tests.programs import mix, random_program, run_serial


@pytest.mark.parametrize("kind", ["naive", "threaded"])
def test_four_threads_push_interleaved_programs(kind):
    """Each thread runs its own random program on its own vars, plus shared counters."""
    nthreads, nvars, nops = 4, 12, 800
    with de.Engine(kind, workers=2) as eng:
        shared = eng.new_var("shared")
        total = [0]
        results = {}
        barrier = threading.Barrier(nthreads, timeout=30)

        def pusher(t):
            steps = random_program(random.Random(100 + t), nvars, nops)
            vs = [eng.new_var(f"t{t}x{i}") for i in range(nvars)]
            values = [0] * nvars

            def body(s):
                reads = [r for r in s.reads if r not in s.writes]

                def fn(ctx):
                    inputs = [values[r] for r in reads]
                    for w in sorted(set(s.writes)):
                        values[w] = mix(values[w], inputs, s.index)
                return fn

            def bump(ctx):
                total[0] += 1  # safe: every bump writes `shared`

            barrier.wait()  # start all pushers together
            for s in steps:
                eng.push(body(s), reads=[vs[r] for r in s.reads], writes=[vs[w] for w in s.writes])
                if s.index % 4 == 0:
                    eng.push(bump, writes=[shared])
            for v in vs:
                eng.wait_for_var(v)
            results[t] = (values, steps)

        threads = [threading.Thread(target=pusher, args=(t,)) for t in range(nthreads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        eng.wait_for_var(shared)
        assert total[0] == nthreads * nops // 4
        for t in range(nthreads):
            values, steps = results[t]
            assert values == run_serial(steps, nvars).values, f"thread {t}"


def test_concurrent_waiters_and_pushers():
    with de.Engine("threaded", workers=2) as eng:
        v = eng.new_var("v")
        errors = []

        def waiter():
            try:
                for _ in range(200):
                    eng.wait_for_var(v, timeout=30)
                eng.wait_all(timeout=30)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        ws = [threading.Thread(target=waiter) for _ in range(3)]
        for w in ws:
            w.start()
        for _ in range(2000):
            eng.push(lambda ctx: None, writes=[v])
        for w in ws:
            w.join()
        eng.wait_all()
        assert not errors and v.version == 2000


def test_close_finishes_pending_ops_and_joins_threads():
    eng = de.Engine("threaded", workers=3)
    gate = Gate()
    v = eng.new_var("v")
    count = [0]

    def inc(ctx):
        count[0] += 1

    eng.push(gate, writes=[v])
    for _ in range(500):
        eng.push(inc, writes=[v])
    names = {t.name for t in threading.enumerate()}
    assert sum(n.startswith("depengine-cpu") for n in names) == 3
    threading.Timer(0.01, gate.open).start()
    eng.close()  # waits for all 501 ops
    assert count[0] == 500 and v.version == 501
    assert not any(t.name.startswith("depengine-cpu") and t.is_alive() for t in threading.enumerate())


def test_ops_may_push_while_the_engine_closes():
    eng = de.Engine("threaded", workers=2)
    v = eng.new_var("v")
    chain = []

    def step(ctx, n=0):
        chain.append(n)
        if n < 20:
            eng.push(lambda c: step(c, n + 1), writes=[v])

    eng.push(step, writes=[v])
    eng.close()
    assert chain == list(range(21))


def test_default_engine_is_shared_and_recreated_after_close(monkeypatch):
    monkeypatch.setenv("DEPENGINE_ENGINE", "threaded")
    import depengine._default as default

    monkeypatch.setattr(default, "_default", None)
    eng = de.default_engine()
    assert de.default_engine() is eng
    eng.close()
    fresh = de.default_engine()
    assert fresh is not eng and not fresh.closed
    fresh.close()


def _child(conn):
    try:
        eng = de.default_engine()
        v = eng.new_var()
        out = []
        eng.push(lambda ctx: out.append(42), writes=[v])
        eng.wait_for_var(v, timeout=30)
        conn.send((id(eng), out))
    except BaseException as exc:  # pragma: no cover - sent to the parent
        conn.send(("error", repr(exc)))


def test_default_engine_is_recreated_in_a_forked_child(monkeypatch):
    monkeypatch.setenv("DEPENGINE_ENGINE", "threaded")
    import depengine._default as default

    monkeypatch.setattr(default, "_default", None)
    parent = de.default_engine()
    parent_var = parent.new_var()
    ctx = multiprocessing.get_context("fork")
    a, b = ctx.Pipe()
    p = ctx.Process(target=_child, args=(b,))
    p.start()
    result = a.recv()
    p.join(30)
    assert result[0] != "error", result
    assert result[1] == [42]
    assert p.exitcode == 0
    parent.push(lambda ctx: None, writes=[parent_var])  # the parent's engine is untouched
    parent.wait_all()
    parent.close()


@pytest.mark.parametrize("wait", ["wait_for_var", "wait_all"])
@pytest.mark.parametrize("kind", ["threaded", "perdevice"])
def test_ctrl_c_ends_a_wait_and_leaves_the_engine_usable(kind, wait, gate):
    """A SIGINT while the main thread waits raises KeyboardInterrupt there, promptly; the op keeps
    running and a later wait sees it finish."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    with de.Engine(kind, workers=2) as eng:
        v = eng.new_var("v")
        eng.push(gate, writes=[v])
        assert gate.started.wait(10)
        main = threading.main_thread().ident
        threading.Timer(0.05, signal.pthread_kill, args=(main, signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            eng.wait_for_var(v, timeout=20) if wait == "wait_for_var" else eng.wait_all(timeout=20)
        assert v.version == 0 and v._waiters is None  # the interrupted wait left nothing behind
        gate.open()
        eng.wait_for_var(v, timeout=20)
        assert v.version == 1
