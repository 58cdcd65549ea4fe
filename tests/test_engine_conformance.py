"""The semantics contract (docs/SEMANTICS.md), checked on every engine kind."""

from __future__ import annotations

import threading

import pytest

import depengine as de
from tests.conftest import Gate


def test_user_example_runs_readers_then_writer(engine):
    a, b, c = engine.new_var("a"), engine.new_var("b"), engine.new_var("c")
    A, B, C = [0], [0], [0]
    engine.push(lambda ctx: A.__setitem__(0, 5), writes=[a], name="fill_a")
    engine.push(lambda ctx: B.__setitem__(0, A[0] + 1), reads=[a], writes=[b], name="b=a+1")
    engine.push(lambda ctx: C.__setitem__(0, A[0] + 2), reads=[a], writes=[c], name="c=a+2")
    engine.push(lambda ctx: A.__setitem__(0, B[0] * C[0]), reads=[b, c], writes=[a], name="a=b*c")
    engine.wait_for_var(a)
    assert A[0] == 6 * 7
    assert (a.version, b.version, c.version) == (2, 1, 1)


def test_raw_war_waw_order(engine):
    v = engine.new_var("v")
    log = []
    lock = threading.Lock()

    def step(tag):
        def fn(ctx):
            with lock:
                log.append(tag)
        return fn

    engine.push(step("w1"), writes=[v])
    engine.push(step("r1"), reads=[v])
    engine.push(step("r2"), reads=[v])
    engine.push(step("w2"), writes=[v])
    engine.push(step("r3"), reads=[v])
    engine.push(step("w3"), writes=[v])
    engine.wait_all()
    pos = {tag: i for i, tag in enumerate(log)}
    assert pos["w1"] < pos["r1"] < pos["w2"]          # read after write, write after read
    assert pos["w1"] < pos["r2"] < pos["w2"]
    assert pos["w2"] < pos["r3"] < pos["w3"]
    assert v.version == 3


def test_readers_between_writes_run_at_the_same_time():
    with de.Engine("threaded", workers=2) as eng:
        v = eng.new_var("v")
        barrier = threading.Barrier(2, timeout=20)
        eng.push(lambda ctx: None, writes=[v])
        # Each reader can only pass the barrier while the other one runs too.
        eng.push(lambda ctx: barrier.wait(), reads=[v], name="reader1")
        eng.push(lambda ctx: barrier.wait(), reads=[v], name="reader2")
        eng.wait_all()


def test_writer_waits_for_every_earlier_reader(threaded_engine, gate):
    eng = threaded_engine
    v = eng.new_var("v")
    reader = eng.push(gate, reads=[v], name="slow reader")
    writer = eng.push(lambda ctx: None, writes=[v], name="writer")
    assert gate.started.wait(10)
    assert writer.state == "pending"  # cannot start: the reader holds v
    assert reader.state == "running"
    gate.open()
    eng.wait_for_var(v)
    assert writer.state == "done" and v.version == 1


def test_independent_ops_do_not_wait_for_each_other(threaded_engine, gate):
    eng = threaded_engine
    a, b = eng.new_var("a"), eng.new_var("b")
    eng.push(gate, writes=[a], name="blocked")
    if eng.options.workers == 1:
        gate.open()  # the only worker is busy: nothing else could run anyway
    done = threading.Event()
    eng.push(lambda ctx: done.set(), writes=[b], name="free")
    assert done.wait(10)
    gate.open()
    eng.wait_all()


def test_duplicates_and_read_write_overlap_do_not_deadlock(engine):
    a, b = engine.new_var("a"), engine.new_var("b")
    op = engine.push(lambda ctx: None, reads=[a, a, b], writes=[a, b, b], name="dup")
    engine.wait_all()
    assert op.reads == () and set(op.writes) == {a, b}
    assert (a.version, b.version) == (1, 1)
    op2 = engine.push(lambda ctx: None, reads=[a, a], writes=[b])
    engine.wait_all()
    assert op2.reads == (a,) and op2.writes == (b,)


def test_versions_count_completed_writes(engine):
    v = engine.new_var("v")
    for _ in range(5):
        engine.push(lambda ctx: None, writes=[v])
    engine.push(lambda ctx: None, reads=[v])
    engine.wait_for_var(v)
    assert v.version == 5


def test_run_context(engine):
    seen = {}

    def fn(ctx):
        seen.update(name=ctx.op_name, device=ctx.device, stream=ctx.stream, id=ctx.op_id)
        assert isinstance(ctx, de.RunContext)

    op = engine.push(fn, name="ctx-check")
    engine.wait_all()
    assert seen == {"name": "ctx-check", "device": de.cpu(), "stream": None, "id": op.id}


def test_unnamed_op_takes_the_function_name(engine):
    def my_kernel(ctx):
        pass

    op = engine.push(my_kernel)
    engine.wait_all()
    assert op.name.endswith("my_kernel")
    assert "my_kernel" in repr(op) and "done" in repr(op)


def test_push_async_completes_when_done_is_called(threaded_engine):
    eng = threaded_engine
    v = eng.new_var("v")
    handoff = []
    started = threading.Event()

    def async_fn(ctx, done):
        handoff.append(done)
        started.set()

    eng.push_async(async_fn, writes=[v], name="async")
    after = eng.push(lambda ctx: None, reads=[v], name="after")
    assert started.wait(10)
    assert after.state == "pending"
    t = threading.Thread(target=handoff[0])
    t.start()
    t.join()
    eng.wait_all()
    assert after.state == "done" and v.version == 1


def test_push_async_done_twice_raises(engine):
    calls = []

    def async_fn(ctx, done):
        done()
        calls.append(done)

    engine.push_async(async_fn)
    engine.wait_all()
    with pytest.raises(RuntimeError, match="already called"):
        calls[0]()


def test_done_rejects_a_non_exception(engine):
    result = {}

    def async_fn(ctx, done):
        try:
            done("oops")
        except TypeError as exc:
            result["error"] = exc
        done()

    engine.push_async(async_fn)
    engine.wait_all()
    assert "must be an exception" in str(result["error"])


def test_naive_push_async_blocks_until_done():
    with de.Engine("naive") as eng:
        v = eng.new_var()
        calls = []

        def async_fn(ctx, done):
            threading.Timer(0.0, done).start()  # done from another thread, later

        eng.push_async(async_fn, writes=[v])
        calls.append(v.version)  # push_async returned only once done ran
        assert calls == [1]


def test_wait_for_var_ignores_pending_reads(threaded_engine, gate):
    eng = threaded_engine
    v = eng.new_var("v")
    eng.push(lambda ctx: None, writes=[v])
    eng.push(gate, reads=[v])
    eng.wait_for_var(v, timeout=10)  # the read is still blocked; the write is done
    assert v.version == 1
    gate.open()
    eng.wait_all()


def test_wait_for_var_waits_for_the_write(threaded_engine, gate):
    eng = threaded_engine
    v = eng.new_var("v")
    eng.push(gate, writes=[v])
    with pytest.raises(TimeoutError, match="timed out"):
        eng.wait_for_var(v, timeout=0.05)
    assert v._waiters is None  # the timed-out wait left nothing behind
    gate.open()
    eng.wait_for_var(v, timeout=10)
    assert v.version == 1


def test_wait_all_timeout_changes_nothing(threaded_engine, gate):
    eng = threaded_engine
    v = eng.new_var("v")
    eng.push(gate, writes=[v])
    eng.push(lambda ctx: None, reads=[v])
    with pytest.raises(TimeoutError):
        eng.wait_all(timeout=0.05)
    gate.open()
    eng.wait_all(timeout=10)
    assert v.version == 1


def test_wait_all_waits_for_everything(engine):
    vs = [engine.new_var() for _ in range(8)]
    count = [0]
    lock = threading.Lock()

    def bump(ctx):
        with lock:
            count[0] += 1

    for i in range(200):
        engine.push(bump, reads=[vs[(i + 1) % 8]], writes=[vs[i % 8]])
    engine.wait_all()
    assert count[0] == 200


def test_bad_timeouts(engine):
    v = engine.new_var()
    with pytest.raises(ValueError, match="timeout=-1"):
        engine.wait_for_var(v, timeout=-1)
    with pytest.raises(TypeError, match="timeout='1'"):
        engine.wait_all(timeout="1")


def test_priority_order_among_ready_ops():
    with de.Engine("threaded", workers=1) as eng:
        gate = Gate()
        order = []
        eng.push(gate, name="busy")
        assert gate.started.wait(10)
        prios = [0, 5, -1, 5, 0, 10, -3, 2]
        for i, p in enumerate(prios):
            eng.push(lambda ctx, i=i: order.append(i), priority=p, name=f"p{p}#{i}")
        gate.open()
        eng.wait_all()
        expected = sorted(range(len(prios)), key=lambda i: (-prios[i], i))
        assert order == expected


def test_delete_var_waits_for_pending_users(threaded_engine, gate):
    eng = threaded_engine
    v = eng.new_var("v")
    deleted = threading.Event()
    eng.push(gate, reads=[v])
    eng.delete_var(v, on_delete=deleted.set)
    assert v.deleted
    assert not deleted.is_set()  # the reader still runs
    gate.open()
    assert deleted.wait(10)
    eng.wait_all()


def test_delete_var_rejects_later_use(engine):
    v = engine.new_var("v")
    engine.push(lambda ctx: None, writes=[v])
    engine.delete_var(v)
    with pytest.raises(de.VarDeletedError, match=r"var 'v' was deleted at push #1"):
        engine.push(lambda ctx: None, reads=[v])
    with pytest.raises(de.VarDeletedError):
        engine.delete_var(v)
    with pytest.raises(de.VarDeletedError):
        engine.wait_for_var(v)
    engine.wait_all()


def test_delete_var_in_naive_runs_on_delete_at_once():
    with de.Engine("naive") as eng:
        v = eng.new_var()
        calls = []
        eng.delete_var(v, on_delete=lambda: calls.append(1))
        assert calls == [1]


def test_engine_type_from_environment(monkeypatch):
    monkeypatch.setenv("DEPENGINE_ENGINE", "naive")
    with de.Engine() as eng:
        assert eng.type == "naive"
    monkeypatch.setenv("DEPENGINE_ENGINE", "bogus")
    with pytest.raises(ValueError, match="DEPENGINE_ENGINE='bogus'"):
        de.Engine()


def test_workers_default_and_environment(monkeypatch):
    from scheduler import usable_cores

    monkeypatch.delenv("DEPENGINE_CPU_WORKERS", raising=False)
    with de.Engine("threaded") as eng:
        assert eng.options.workers == usable_cores()
    monkeypatch.setenv("DEPENGINE_CPU_WORKERS", "3")
    with de.Engine("threaded") as eng:
        assert eng.options.workers == 3
        assert len(eng.threads()) == 3
    monkeypatch.setenv("DEPENGINE_CPU_WORKERS", "many")
    with pytest.raises(ValueError, match="DEPENGINE_CPU_WORKERS='many'"):
        de.Engine("threaded")


def test_repr_shows_state(threaded_engine, gate):
    eng = threaded_engine
    v = eng.new_var("w")
    eng.push(gate, reads=[v])
    eng.push(lambda ctx: None, writes=[v])
    assert gate.started.wait(10)
    assert repr(v) == "<Var 'w' v0 readers=1 writing=False queued=1>"
    assert "pending=2" in repr(eng)
    gate.open()
    eng.wait_all()
    assert repr(v) == "<Var 'w' v1 readers=0 writing=False>"
