"""Recorded plans and bulks: the same results as imperative pushes, only faster."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import depengine as de
import ops as nd
from depengine import DepengineError
from tests.conftest import ENGINE_CONFIGS, REAL_GPU, config_id
from tests.programs import Step, StepFailed, mix
from tests.test_differential import programs


def _pusher(eng, vs, values):
    def push_step(s: Step):
        writes = sorted(set(s.writes))
        reads = [r for r in s.reads if r not in s.writes]

        def fn(ctx):
            if s.fails:
                raise StepFailed(s.index)
            inputs = [values[r] for r in reads]
            for w in writes:
                values[w] = mix(values[w], inputs, s.index)
        return eng.push(fn, reads=[vs[r] for r in s.reads], writes=[vs[w] for w in s.writes],
                        always_run=s.always_run, name=f"step{s.index}")
    return push_step


def _finish(eng):
    try:
        eng.wait_all(timeout=120)
    except StepFailed:
        pass
    eng.wait_all()


def _imperative(kind, workers, nvars, steps, runs):
    with de.Engine(kind, workers=workers) as eng:
        vs = [eng.new_var(f"x{i}") for i in range(nvars)]
        values = [0] * nvars
        push = _pusher(eng, vs, values)
        for _ in range(runs):
            for s in steps:
                push(s)
        _finish(eng)
        return values, [v.version for v in vs], [v._failure is not None for v in vs]


def _replayed(kind, workers, nvars, steps, runs, **opts):
    with de.Engine(kind, workers=workers) as eng:
        vs = [eng.new_var(f"x{i}") for i in range(nvars)]
        values = [0] * nvars
        push = _pusher(eng, vs, values)
        with eng.record(execute=False) as g:
            for s in steps:
                push(s)
        plan = g.compile(**opts)
        for _ in range(runs):
            plan.run()
        _finish(eng)
        return values, [v.version for v in vs], [v._failure is not None for v in vs]


@pytest.mark.parametrize("config", ENGINE_CONFIGS, ids=config_id)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(program=programs(max_vars=12, max_ops=80), runs=st.integers(1, 4), bulk=st.booleans())
def test_replay_equals_imperative(config, program, runs, bulk):
    nvars, steps = program
    kind, workers = config
    want = _imperative("naive", 1, nvars, steps, runs)
    got = _replayed(kind, workers, nvars, steps, runs, bulk=bulk)
    assert got == want


@pytest.mark.parametrize("config", ENGINE_CONFIGS, ids=config_id)
def test_imperative_pushes_between_replays_keep_push_order(config):
    kind, workers = config
    with de.Engine(kind, workers=workers) as eng:
        v = eng.new_var("v")
        log = []
        with eng.record(execute=False) as g:
            eng.push(lambda ctx: log.append("p1"), writes=[v])
            eng.push(lambda ctx: log.append("p2"), reads=[v])
        plan = g.compile()
        for k in range(5):
            plan.run()
            eng.push(lambda ctx, k=k: log.append(f"imp{k}"), writes=[v])
        eng.wait_all()
        assert log == [x for k in range(5) for x in ("p1", "p2", f"imp{k}")]
        assert v.version == 5 * 1 + 5


def test_record_with_execute_runs_the_ops_too():
    with de.Engine("threaded", workers=2) as eng:
        v = eng.new_var()
        count = [0]
        with eng.record() as g:
            eng.push(lambda ctx: count.__setitem__(0, count[0] + 1), writes=[v])
        eng.wait_all()
        assert count == [1] and len(g) == 1
        g.compile().run()
        eng.wait_all()
        assert count == [2] and v.version == 2


def test_failing_op_in_a_replay_follows_the_failure_rules():
    with de.Engine("threaded", workers=2) as eng:
        a, b, c, d = (eng.new_var(n) for n in "abcd")
        ran = []
        boom = ValueError("boom")

        def fail(ctx):
            raise boom
        with eng.record(execute=False) as g:
            eng.push(fail, writes=[a], name="fails")
            eng.push(lambda ctx: ran.append("dependent"), reads=[a], writes=[b], name="dependent")
            eng.push(lambda ctx: ran.append("free"), writes=[c], name="free")
            eng.push(lambda ctx: ran.append("rescue"), reads=[a], writes=[d], always_run=True)
        g.compile().run()
        with pytest.raises(ValueError) as info:
            eng.wait_for_var(b)
        assert info.value is boom and any("op 'fails'" in n for n in info.value.__notes__)
        eng.wait_for_var(c)
        eng.wait_for_var(d)  # always_run wrote d cleanly
        assert sorted(ran) == ["free", "rescue"]
        assert (a.version, b.version, c.version, d.version) == (1, 1, 1, 1)
        eng.wait_all()  # reported already


def test_a_failed_external_input_skips_only_its_readers():
    with de.Engine("threaded", workers=2) as eng:
        x, y, z = eng.new_var("x"), eng.new_var("y"), eng.new_var("z")
        ran = []
        with eng.record(execute=False) as g:
            eng.push(lambda ctx: ran.append("reads x"), reads=[x], writes=[y])
            eng.push(lambda ctx: ran.append("free"), writes=[z])
        plan = g.compile()
        eng.push(lambda ctx: 1 / 0, writes=[x])
        plan.run()
        with pytest.raises(ZeroDivisionError):
            eng.wait_for_var(y)
        eng.wait_for_var(z)
        assert ran == ["free"]


def test_plan_errors():
    with de.Engine("threaded", workers=1) as eng, de.Engine("threaded", workers=1) as other:
        v = eng.new_var("v")
        with eng.record() as g:
            with pytest.raises(DepengineError, match="records do not nest"), eng.record():
                pass
            with pytest.raises(DepengineError, match="after its record"):
                g.compile()
            eng.push(lambda ctx: None, reads=[v], writes=[eng.new_var()])
        plan = g.compile()
        with pytest.raises(DepengineError, match="cannot run on"):
            plan.run(engine=other)
        eng.delete_var(v)
        with pytest.raises(de.VarDeletedError, match="var 'v' was deleted"):
            plan.run()
        with pytest.raises(TypeError, match="execute"), eng.record(execute="no"):
            pass


def test_a_plan_of_no_op_finishes(engine):
    with engine.record() as g:
        pass
    plan = g.compile()
    plan.run()
    plan.run()
    engine.wait_all(timeout=10)


def test_optimisations_change_nothing_but_speed():
    with de.Engine("threaded", workers=2) as eng:
        nd.set_engine(eng)
        try:
            a = nd.array(np.linspace(-1, 1, 60).reshape(6, 10))
            b = nd.array(np.linspace(0, 2, 10))
            scratch = eng.new_var("scratch")
            with eng.record(execute=False) as g:
                out = ((a * 2.0 + b).tanh() - 1.5).square()
                eng.push(lambda ctx: None, writes=[scratch], pure=True, name="dead store")
                eng.push(lambda ctx: None, writes=[scratch], name="overwrites it")
            variants = {"none": {}, "prune": {"prune": True}, "fuse": {"fuse": True},
                        "bulk": {"bulk": True}, "all": {"prune": True, "fuse": True, "bulk": True}}
            results, plans = {}, {}
            for key, opts in variants.items():
                plan = plans[key] = g.compile(**{"prune": False, "fuse": False, "bulk": False, **opts})
                plan.run()
                results[key] = out.asnumpy()
            for arr in results.values():
                np.testing.assert_array_equal(arr, results["none"])
            np.testing.assert_allclose(results["none"],
                                       np.square(np.tanh(np.linspace(-1, 1, 60).reshape(6, 10) * 2
                                                         + np.linspace(0, 2, 10)) - 1.5), rtol=1e-13)
            assert plans["prune"].pruned == 1 and plans["none"].pruned == 0
            assert plans["fuse"].fused == 4 and plans["none"].fused == 0
            assert len(plans["bulk"].chunks) < len(plans["none"].chunks)
            assert plans["all"].pruned == 1 and plans["all"].fused == 4
        finally:
            nd.set_engine(None)


def test_gpu_plans_are_captured_once_and_launched_as_a_graph(nd_engine):
    start = np.linspace(-1, 1, 24).reshape(4, 6)
    x = nd.array(start, device=de.gpu(0))
    with nd_engine.record(execute=False) as g:
        y = x * 0.5              # a fresh output: allocated by the first run
        nd.add(y, 1.0, out=x)    # the scalar is broadcast through scratch memory
    plan = g.compile()
    assert plan.mode == "gpu" and plan.device == de.gpu(0) and plan.why_imperative is None
    want = start.copy()
    for k in range(6):
        plan.run()
        want = want * 0.5 + 1.0
        np.testing.assert_allclose(x.asnumpy(), want, rtol=1e-15)
        assert plan.graph_launches == k  # run 1 eager; run 2 captures then launches; later ones launch
    assert plan.cuda_graph is not None and plan.why_no_graph is None
    assert x._var.version == 1 + 6
    graph = plan.cuda_graph
    if not REAL_GPU:  # the simulator's graph shows that it was destroyed with the plan
        assert graph.items
        del plan
        gc.collect()
        assert graph.items == []


def test_a_gpu_plan_whose_capture_fails_replays_eagerly(nd_engine):
    x = nd.array(np.zeros(8), device=de.gpu(0))
    v = nd_engine.new_var("v")
    rt = nd.engine().gpu_runtime(de.gpu(0))

    def syncs(ctx):  # synchronising a capturing stream is not allowed in CUDA graphs
        rt.synchronize_stream(ctx.stream)

    with nd_engine.record(execute=False) as g:
        nd.add(x, 1.0, out=x)
        nd_engine.push(syncs, writes=[v], device=de.gpu(0), name="syncs")
    plan = g.compile()
    for _ in range(4):
        plan.run()
    np.testing.assert_array_equal(x.asnumpy(), np.full(8, 4.0))
    assert plan.cuda_graph is None and plan.graph_launches == 0
    assert "STREAM_CAPTURE_UNSUPPORTED" in plan.why_no_graph
    assert v.version == 4


def test_failures_inside_a_gpu_plan_follow_the_rules(nd_engine):
    a, b, c = (nd_engine.new_var(n) for n in "abc")
    log = []
    with nd_engine.record(execute=False) as g:
        nd_engine.push(lambda ctx: log.append("a"), writes=[a], device=de.gpu(0), name="ok")
        nd_engine.push(lambda ctx: 1 / 0, reads=[a], writes=[b], device=de.gpu(0), name="boom")
        nd_engine.push(lambda ctx: log.append("c"), reads=[b], writes=[c], device=de.gpu(0), name="skipped")
    plan = g.compile()
    plan.run()
    with pytest.raises(ZeroDivisionError):
        nd_engine.wait_for_var(c)
    assert log == ["a"]
    assert not a.failed and a.version == 1 and c.version == 1
    plan.run()  # a run starting from no failed var: the same rules again
    with pytest.raises(ZeroDivisionError):
        nd_engine.wait_for_var(b)
    assert log == ["a", "a"]


def test_mixed_device_plans_replay_imperatively(nd_engine):
    v, w = nd_engine.new_var("v"), nd_engine.new_var("w")
    with nd_engine.record(execute=False) as g:
        nd_engine.push(lambda ctx: None, writes=[v], device=de.gpu(0), name="on gpu")
        nd_engine.push(lambda ctx: None, reads=[v], writes=[w], name="on cpu")
    plan = g.compile()
    assert plan.mode == "imperative" and "on cpu" in plan.why_imperative
    plan.run()
    plan.run()
    nd_engine.wait_all()
    assert (v.version, w.version) == (2, 2)


def test_plan_graph_draws_the_plan():
    from viz import plan_graph

    with de.Engine("threaded", workers=2) as eng:
        a, b = eng.new_var("a"), eng.new_var("b")
        with eng.record(execute=False) as g:
            eng.push(lambda ctx: None, writes=[a], name="produce")
            eng.push(lambda ctx: None, reads=[a], writes=[b], name="consume")
            eng.push(lambda ctx: None, writes=[a], name="overwrite")
        src = plan_graph(g.compile()).source
        assert 'label="produce\n#0"' in src and 'label="consume\n#1"' in src
        assert 't0 -> t1 [label="a\nRAW" style=solid]' in src
        assert 't1 -> t2 [label="a\nWAR" style=dashed]' in src


# -------------------------------------------------------------------- bulk
@pytest.mark.parametrize("config", ENGINE_CONFIGS, ids=config_id)
def test_bulk_gives_the_same_results_and_versions(config):
    kind, workers = config
    with de.Engine(kind, workers=workers) as eng:
        vs = [eng.new_var() for _ in range(5)]
        values = [0] * 5

        def add(i, j, k):
            def fn(ctx):
                values[i] = mix(values[i], [values[j]], k)
            return fn

        with eng.bulk(7):
            for k in range(100):
                i, j = k % 5, (k * 3) % 5
                eng.push(add(i, j, k), reads=[vs[j]], writes=[vs[i]])
        eng.wait_all()
        ref = [0] * 5
        for k in range(100):
            i, j = k % 5, (k * 3) % 5
            ref[i] = mix(ref[i], [ref[j]], k)
        assert values == ref
        assert [v.version for v in vs] == [20] * 5


@pytest.mark.parametrize("config", ENGINE_CONFIGS, ids=config_id)
@pytest.mark.parametrize("how", ["bulk", "plan"])
def test_an_op_that_raises_inside_a_bulk_or_plan_runs_once(config, how):
    kind, workers = config
    with de.Engine(kind, workers=workers) as eng:
        a, b, c = eng.new_var("a"), eng.new_var("b"), eng.new_var("c")
        calls = []

        def boom(ctx):
            calls.append("boom")
            raise KeyError("boom")

        def program():
            eng.push(lambda ctx: calls.append("first"), writes=[a])
            eng.push(boom, reads=[a], writes=[b], name="boom")
            eng.push(lambda ctx: calls.append("skipped"), reads=[b], writes=[c])
            eng.push(lambda ctx: calls.append("last"), writes=[a])

        if how == "bulk":
            with eng.bulk(64):
                program()
        else:
            with eng.record(execute=False) as g:
                program()
            g.compile().run()
        with pytest.raises(KeyError) as info:
            eng.wait_all()
        assert calls == ["first", "boom", "last"]
        assert sum("raised by op 'boom'" in n for n in info.value.__notes__) == 1
        assert (a.version, b.version, c.version) == (2, 1, 1)


def test_waits_flush_the_bulk_and_failures_stay_exact():
    with de.Engine("threaded", workers=2) as eng:
        a, b, c = eng.new_var("a"), eng.new_var("b"), eng.new_var("c")
        ran = []
        with eng.bulk(64):
            ops = [eng.push(lambda ctx: 1 / 0, writes=[a]),
                   eng.push(lambda ctx: ran.append("skipped"), reads=[a], writes=[b]),
                   eng.push(lambda ctx: ran.append("c"), writes=[c])]
            eng.wait_for_var(c)  # flushes the bulk first: never hangs
            assert ran == ["c"]
            with pytest.raises(ZeroDivisionError):
                eng.wait_for_var(b)
        assert [op.state for op in ops] == ["failed", "skipped", "done"]
        assert ops[1].error is ops[0].error
        with pytest.raises(ValueError, match="bulk size=0"), eng.bulk(0):
            pass


def test_async_and_gpu_ops_end_a_bulk_group():
    with de.Engine("threaded", workers=2) as eng:
        v = eng.new_var()
        order = []
        with eng.bulk(64):
            eng.push(lambda ctx: order.append(1), writes=[v])
            eng.push_async(lambda ctx, done: (order.append(2), done()), writes=[v])
            eng.push(lambda ctx: order.append(3), writes=[v])
        eng.wait_all()
        assert order == [1, 2, 3] and v.version == 3


def test_profile_shows_every_op_inside_a_bulk():
    with de.profile() as prof, de.Engine("threaded", workers=2) as eng:
        v = eng.new_var("v")
        with eng.bulk(10):
            for k in range(10):
                eng.push(lambda ctx: None, writes=[v], name=f"op{k}")
        eng.wait_all()
        gathered = eng.options.core == "python"  # the compiled core pushes each op on its own
    names = [r.name for r in prof.trace().ops]
    assert [n for n in names if n.startswith("op")] == [f"op{k}" for k in range(10)]
    assert ("bulk(10)" in names) == gathered
    versions = [r.writes[0][2] for r in prof.trace().ops if r.name.startswith("op")]
    assert versions == list(range(1, 11))


def test_bulk_is_per_thread():
    with de.Engine("threaded", workers=2) as eng:
        v = eng.new_var()
        other_done = threading.Event()

        def other():
            eng.push(lambda ctx: None, writes=[eng.new_var()])  # not bulked: not this thread's bulk
            other_done.set()

        with eng.bulk(64):
            eng.push(lambda ctx: None, writes=[v])
            t = threading.Thread(target=other)
            t.start()
            t.join()
            assert other_done.is_set()
        eng.wait_all()
        assert v.version == 1


def test_bulked_ops_look_like_any_op():
    with de.Engine("threaded", workers=2) as eng:
        v, w = eng.new_var("v"), eng.new_var("w")
        seen = []
        with eng.bulk(8):
            ops = [eng.push(lambda ctx: seen.append((ctx.op_name, ctx.op_id, ctx.device)),
                            reads=[w], writes=[v], name=f"m{k}", priority=k) for k in range(3)]
            if eng.options.core == "python":  # gathered until the block ends (not on the compiled core)
                assert [op.state for op in ops] == ["pending"] * 3
            assert all(isinstance(op, de.Op) for op in ops)
        eng.wait_all()
        assert [op.state for op in ops] == ["done"] * 3 and all(op.error is None for op in ops)
        assert all(op.device == de.cpu() and op.kind == "normal" and op.stream is None and not op.is_async
                   for op in ops)
        assert all(op.reads == (w,) and op.writes == (v,) for op in ops)
        ids = [op.id for op in ops]
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert seen == [(f"m{k}", ids[k], de.cpu()) for k in range(3)]
        assert "m1" in repr(ops[1]) and "done" in repr(ops[1])
        assert (v.version, w.version) == (3, 0)


def test_a_levels_chains_are_dealt_longest_first_to_the_lightest_dispatch():
    """Three chains after one op, on 2 workers: the long one alone, the two short ones together (so
    two long chains of a level never wait one behind the other while a worker idles)."""
    with de.Engine("threaded", workers=2) as eng:
        root, v1, v2, v3 = (eng.new_var(n) for n in ("root", "v1", "v2", "v3"))
        with eng.record(execute=False) as g:
            eng.push(lambda ctx: None, writes=[root], name="root")
            eng.push(lambda ctx: None, reads=[root], writes=[v2], name="s1")
            for k in range(3):
                eng.push(lambda ctx: None, reads=[root] if k == 0 else [], writes=[v1], name=f"long{k}")
            eng.push(lambda ctx: None, reads=[root], writes=[v3], name="s2")
        plan = g.compile(fuse=False)
        chunks = sorted(sorted(plan.specs[i].name for i in members) for members in plan.chunks)
        assert chunks == [["long0", "long1", "long2"], ["root"], ["s1", "s2"]]
        plan.run()
        eng.wait_all()
        assert (v1.version, v2.version, v3.version) == (3, 1, 1)
