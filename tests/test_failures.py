"""Failures: they reach the waiter, skip dependents, are reported once, never lost."""

from __future__ import annotations

import logging
import threading
import traceback

import pytest

import depengine as de


class Boom(Exception):
    pass


def boom(ctx):
    raise Boom("boom")


def test_failure_skips_dependents_and_reaches_the_waiter(engine):
    a, b, c = engine.new_var("a"), engine.new_var("b"), engine.new_var("c")
    ran = []
    failing = engine.push(boom, writes=[a], name="fails")
    skipped = engine.push(lambda ctx: ran.append("skipped"), reads=[a], writes=[b], name="reads a")
    unrelated = engine.push(lambda ctx: ran.append("unrelated"), writes=[c], name="unrelated")
    with pytest.raises(Boom) as info:
        engine.wait_for_var(b)
    exc = info.value
    engine.wait_for_var(c)  # b's waiter need not wait for an op that does not write b
    assert ran == ["unrelated"]
    assert failing.state == "failed" and skipped.state == "skipped" and unrelated.state == "done"
    assert failing.error is exc and skipped.error is exc  # the very same object
    assert any("op 'fails'" in note for note in exc.__notes__)
    frames = [f.name for f in traceback.extract_tb(exc.__traceback__)]
    assert "boom" in frames  # the original traceback is kept
    assert (a.version, b.version) == (1, 1)  # failed and skipped writes count
    with pytest.raises(Boom) as again:
        engine.wait_for_var(a)
    assert again.value is exc
    engine.wait_all()  # both vars reported: nothing left


def test_wait_clears_failure_for_later_ops_only(threaded_engine, gate):
    eng = threaded_engine
    v, u, out = eng.new_var("v"), eng.new_var("u"), eng.new_var("out")
    ran = []
    eng.push(boom, writes=[v], name="fails")
    eng.push(gate, writes=[u], name="gate")
    # pushed before the wait, but held back by the gate: must still be skipped
    early = eng.push(lambda ctx: ran.append("early"), reads=[v, u], writes=[out], name="early")
    if eng.options.workers > 1:
        assert gate.started.wait(10)
    with pytest.raises(Boom):
        eng.wait_for_var(v)
    late = eng.push(lambda ctx: ran.append("late"), reads=[v], name="late")
    eng.wait_for_var(v)  # reported already: returns normally
    assert not v.failed
    gate.open()
    eng.wait_all()
    assert early.state == "skipped" and late.state == "done"
    assert ran == ["late"]


def test_wait_all_reports_each_failure_once(engine):
    a, b = engine.new_var("a"), engine.new_var("b")
    engine.push(lambda ctx: (_ for _ in ()).throw(Boom("first")), writes=[a], name="f1")
    engine.push(lambda ctx: (_ for _ in ()).throw(ValueError("second")), writes=[b], name="f2")
    with pytest.raises((Boom, ValueError)) as info:
        engine.wait_all()
    notes = "\n".join(info.value.__notes__)
    assert "1 more failure(s)" in notes
    engine.wait_all()  # everything was reported and cleared
    ran = []
    engine.push(lambda ctx: ran.append(1), reads=[a, b])
    engine.wait_all()
    assert ran == [1]
    assert not a.failed and not b.failed


def test_failure_reported_by_wait_for_var_is_not_raised_again_by_wait_all(engine):
    a = engine.new_var("a")
    engine.push(boom, writes=[a])
    with pytest.raises(Boom):
        engine.wait_for_var(a)
    engine.wait_all()


def test_op_without_writes_still_reports_its_failure(engine):
    v = engine.new_var("v")
    engine.push(boom, reads=[v], name="read-only failure")
    with pytest.raises(Boom):
        engine.wait_all()
    engine.wait_all()


def test_always_run_runs_anyway_and_cleans_its_writes(engine):
    a, b = engine.new_var("a"), engine.new_var("b")
    ran = []
    engine.push(boom, writes=[a])
    engine.push(lambda ctx: ran.append("skipped"), reads=[a], writes=[b])
    rescue = engine.push(lambda ctx: ran.append("rescue"), reads=[a], writes=[b], always_run=True)
    after = engine.push(lambda ctx: ran.append("after"), reads=[b])
    engine.wait_for_var(b)  # b was rewritten cleanly: no raise
    with pytest.raises(Boom):
        engine.wait_all()  # a's failure was never reported
    assert ran == ["rescue", "after"]
    assert rescue.state == "done" and after.state == "done"


def test_always_run_failure_is_its_own(engine):
    a, b = engine.new_var("a"), engine.new_var("b")
    engine.push(boom, writes=[a])
    engine.push(lambda ctx: (_ for _ in ()).throw(KeyError("mine")), reads=[a], writes=[b], always_run=True)
    with pytest.raises(KeyError):
        engine.wait_for_var(b)
    with pytest.raises(Boom):
        engine.wait_all()


def test_done_with_error_fails_the_op(engine):
    v, w = engine.new_var("v"), engine.new_var("w")
    err = Boom("async failure")
    engine.push_async(lambda ctx, done: done(err), writes=[v], name="async-fail")
    skipped = engine.push(lambda ctx: None, reads=[v], writes=[w])
    with pytest.raises(Boom) as info:
        engine.wait_for_var(w)
    assert info.value is err and skipped.state == "skipped"
    engine.wait_all()


def test_async_fn_raising_before_done_fails_the_op(engine):
    v = engine.new_var("v")
    engine.push_async(lambda ctx, done: boom(ctx), writes=[v])
    with pytest.raises(Boom):
        engine.wait_for_var(v)


def test_async_fn_raising_after_done_is_reported_not_lost(engine):
    v = engine.new_var("v")

    def fn(ctx, done):
        done()
        raise Boom("after done")

    engine.push_async(fn, writes=[v])
    engine.wait_for_var(v)  # the op itself completed cleanly
    with pytest.raises(Boom, match="after done"):
        engine.wait_all()


def test_error_in_on_delete_reaches_wait_all(engine):
    v = engine.new_var("v")

    def bad_release():
        raise Boom("release failed")

    engine.delete_var(v, on_delete=bad_release)
    with pytest.raises(Boom, match="release failed") as info:
        engine.wait_all()
    assert any("on_delete of var 'v'" in n for n in info.value.__notes__)
    engine.wait_all()


def test_deleting_a_failed_var_still_releases_it(engine):
    v = engine.new_var("v")
    released = []
    engine.push(boom, writes=[v])
    engine.delete_var(v, on_delete=lambda: released.append(True))
    with pytest.raises(Boom):
        engine.wait_all()
    assert released == [True]
    assert v not in engine._failed_vars


def test_failures_never_kill_workers(engine):
    v = engine.new_var("v")
    for i in range(50):
        engine.push(boom if i % 2 else (lambda ctx: None), writes=[engine.new_var()])
    engine.push(lambda ctx: (_ for _ in ()).throw(SystemExit(3)), writes=[v])
    with pytest.raises(SystemExit):
        engine.wait_for_var(v)
    with pytest.raises(Boom):
        engine.wait_all()
    ran = threading.Event()
    engine.push(lambda ctx: ran.set())
    engine.wait_all()
    assert ran.is_set()


def test_unreported_failure_is_logged_at_close(caplog):
    eng = de.Engine("threaded", workers=2)
    eng.push(boom, writes=[eng.new_var("v")], name="never waited")
    with caplog.at_level(logging.ERROR, logger="depengine"):
        eng.close()
    records = [r for r in caplog.records if "no wait reported" in r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info[0] is Boom


def test_deadlock_inside_an_op_is_detected(engine):
    v, w = engine.new_var("v"), engine.new_var("w")
    errors = []

    def waits_on_itself(ctx):
        try:
            engine.wait_for_var(v)  # v is written by this very op
        except de.DeadlockError as exc:
            errors.append(exc)
        try:
            engine.wait_all()
        except de.DeadlockError as exc:
            errors.append(exc)
        engine.wait_for_var(w)  # w is complete: fine from inside an op

    engine.push(lambda ctx: None, writes=[w])
    engine.wait_for_var(w)
    engine.push(waits_on_itself, writes=[v])
    engine.wait_all()
    assert len(errors) == 2
    assert "wait_for_var('v') inside an op" in str(errors[0])


def test_close_inside_an_op_is_refused(engine):
    errors = []

    def closes(ctx):
        try:
            engine.close()
        except de.DeadlockError as exc:
            errors.append(exc)

    engine.push(closes)
    engine.wait_all()
    assert len(errors) == 1 and not engine.closed


def test_naive_engine_has_the_same_failure_semantics():
    results = {}
    for kind in ("naive", "threaded"):
        with de.Engine(kind, workers=2) as eng:
            a, b, c = eng.new_var("a"), eng.new_var("b"), eng.new_var("c")
            ops = [
                eng.push(boom, writes=[a]),
                eng.push(lambda ctx: None, reads=[a], writes=[b]),
                eng.push(lambda ctx: None, reads=[b], writes=[c], always_run=True),
                eng.push(lambda ctx: None, reads=[c], writes=[a]),
            ]
            with pytest.raises(Boom):
                eng.wait_all()
            results[kind] = ([op.state for op in ops], [v.version for v in (a, b, c)])
    assert results["naive"] == results["threaded"]
    assert results["naive"][0] == ["failed", "skipped", "done", "skipped"]
