"""One transition at a time, with the whole resulting var state asserted."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import depengine as de
from depengine import Var, _compiled
from tests.conftest import Gate


def state(v):
    return v._state()


@pytest.fixture(params=["python"] + (["compiled"] if _compiled.COMPILED_AVAILABLE else []))
def eng(request):
    e = de.Engine("threaded", workers=4, core=request.param)
    yield e
    e.close()


def test_push_and_complete_transitions(eng):
    v = eng.new_var("v")
    g_w1, g_r1, g_r2 = Gate(), Gate(), Gate()
    try:
        eng.push(g_w1, writes=[v], name="w1")
        assert g_w1.started.wait(10)
        assert state(v) == {"nread": 0, "writing": True, "queue": [], "pending_writes": 1, "version": 0}

        eng.push(g_r1, reads=[v], name="r1")
        eng.push(g_r2, reads=[v], name="r2")
        w2 = eng.push(lambda ctx: None, writes=[v], name="w2")
        assert state(v) == {"nread": 0, "writing": True, "queue": ["r1", "r2", "w2"],
                            "pending_writes": 2, "version": 0}
        g_w1.open()  # w1 completes: both reads are granted together, w2 still waits
        assert g_r1.started.wait(10) and g_r2.started.wait(10)
        assert state(v) == {"nread": 2, "writing": False, "queue": ["w2"], "pending_writes": 1, "version": 1}
        assert w2.state == "pending"

        g_r1.open()
        r3 = eng.push(lambda ctx: None, reads=[v], name="r3")
        assert w2.state == "pending"  # r2 still runs
        assert r3.state == "pending"  # a read behind a queued write waits
        g_r2.open()  # last reader done: w2 is granted, then r3
        eng.wait_all()
        assert state(v) == {"nread": 0, "writing": False, "queue": [], "pending_writes": 0, "version": 2}
    finally:
        for g in (g_w1, g_r1, g_r2):
            g.open()


def test_check_invariants_catches_a_broken_state():
    v = de.Engine("naive", core="python").new_var("v")
    v._nread = 1
    v._writing = True
    with pytest.raises(AssertionError, match="readers and a writer"):
        v._check_invariants()
    v._nread, v._writing = 0, False
    v._pending_writes = 3
    with pytest.raises(AssertionError, match="pending_writes=3"):
        v._check_invariants()
    v._pending_writes = 0
    v._check_invariants()


# ------------------------------------------------ each transition, both implementations
IMPLS = ["Python"]


def transitions(impl):
    """(new_op, append_read, append_write, complete_read, complete_write) of one implementation."""
    from depengine import _op, _var

    return _op.new_op, _var.append_read, _var.append_write, _var.complete_read, _var.complete_write


def var(name="v"):
    return Var._create(None, name, 0)


def full_state(v):
    return {"nread": v._nread, "writing": v._writing, "queue": [op._name for op in v._queue],
            "pending_writes": v._pending_writes, "version": v.version}


def make_op(new_op, name, reads=(), writes=(), wait=None):
    op = new_op(None, tuple(reads), tuple(writes), name, 0, False, False, de.cpu(), "normal", None)
    op._wait = len(reads) + len(writes) if wait is None else wait
    return op


@pytest.mark.parametrize("impl", IMPLS)
def test_new_op_sets_every_field(impl):
    new_op = transitions(impl)[0]
    v = var()
    op = new_op(print, (), (v,), "w", 3, True, False, de.cpu(), "copy", {v: 2})
    assert type(op) is de.Op
    assert (op.fn, op.reads, op.writes, op._name, op.priority, op.always_run, op.is_async, op.device,
            op.kind, op._wcounts, op.stream, op.error, op.state) == (
        print, (), (v,), "w", 3, True, False, de.cpu(), "copy", {v: 2}, None, None, "pending")


@pytest.mark.parametrize("impl", IMPLS)
def test_append_read_grants_an_idle_var_and_queues_behind_a_write(impl):
    new_op, append_read, append_write, *_ = transitions(impl)
    v = var()
    r1, w, r2 = make_op(new_op, "r1", reads=[v]), make_op(new_op, "w", writes=[v]), make_op(new_op, "r2", [v])
    assert append_read(v, r1) is True
    assert full_state(v) == {"nread": 1, "writing": False, "queue": [], "pending_writes": 0, "version": 0}
    assert append_write(v, w, 1) is False
    assert full_state(v) == {"nread": 1, "writing": False, "queue": ["w"], "pending_writes": 1, "version": 0}
    assert append_read(v, r2) is False  # behind the queued write, though a read is running
    assert full_state(v) == {"nread": 1, "writing": False, "queue": ["w", "r2"], "pending_writes": 1,
                             "version": 0}
    v._check_invariants()


@pytest.mark.parametrize("impl", IMPLS)
def test_append_write_grants_an_idle_var_and_counts_composite_writes(impl):
    new_op, append_read, append_write, *_ = transitions(impl)
    v = var()
    w1, w2 = make_op(new_op, "w1", writes=[v]), make_op(new_op, "w2", writes=[v])
    assert append_write(v, w1, 3) is True
    assert full_state(v) == {"nread": 0, "writing": True, "queue": [], "pending_writes": 3, "version": 0}
    assert append_write(v, w2, 1) is False
    assert full_state(v) == {"nread": 0, "writing": True, "queue": ["w2"], "pending_writes": 4, "version": 0}
    assert append_read(v, make_op(new_op, "r", reads=[v])) is False
    assert full_state(v)["queue"] == ["w2", "r"]


@pytest.mark.parametrize("impl", IMPLS)
def test_complete_read_grants_the_queued_write_after_the_last_reader(impl):
    new_op, append_read, append_write, complete_read, _ = transitions(impl)
    v = var()
    append_read(v, make_op(new_op, "r1", reads=[v]))
    append_read(v, make_op(new_op, "r2", reads=[v]))
    w = make_op(new_op, "w", writes=[v], wait=2)  # waits for one more var besides v
    append_write(v, w, 1)
    ready = []
    complete_read(v, ready)
    assert full_state(v) == {"nread": 1, "writing": False, "queue": ["w"], "pending_writes": 1, "version": 0}
    assert ready == [] and w._wait == 2
    complete_read(v, ready)
    assert full_state(v) == {"nread": 0, "writing": True, "queue": [], "pending_writes": 1, "version": 0}
    assert ready == [] and w._wait == 1  # granted v, still waits for its other var
    v._check_invariants()


@pytest.mark.parametrize("impl", IMPLS)
def test_complete_write_grants_every_read_up_to_the_next_write(impl):
    new_op, append_read, append_write, _, complete_write = transitions(impl)
    v = var()
    append_write(v, make_op(new_op, "w1", writes=[v]), 2)
    r1, r2 = make_op(new_op, "r1", reads=[v]), make_op(new_op, "r2", reads=[v])
    w2, r3 = make_op(new_op, "w2", writes=[v]), make_op(new_op, "r3", reads=[v])
    for op in (r1, r2):
        append_read(v, op)
    append_write(v, w2, 1)
    append_read(v, r3)
    ready = []
    complete_write(v, 2, ready)
    assert full_state(v) == {"nread": 2, "writing": False, "queue": ["w2", "r3"], "pending_writes": 1,
                             "version": 2}
    assert ready == [r1, r2] and r1._wait == r2._wait == 0
    v._check_invariants()


@pytest.mark.parametrize("impl", IMPLS)
def test_complete_write_grants_one_queued_write(impl):
    new_op, _, append_write, _, complete_write = transitions(impl)
    v = var()
    append_write(v, make_op(new_op, "w1", writes=[v]), 1)
    w2, w3 = make_op(new_op, "w2", writes=[v]), make_op(new_op, "w3", writes=[v])
    append_write(v, w2, 1)
    append_write(v, w3, 1)
    ready = []
    complete_write(v, 1, ready)
    assert full_state(v) == {"nread": 0, "writing": True, "queue": ["w3"], "pending_writes": 2, "version": 1}
    assert ready == [w2]
    complete_write(v, 1, ready)
    complete_write(v, 1, ready)
    assert full_state(v) == {"nread": 0, "writing": False, "queue": [], "pending_writes": 0, "version": 3}
    assert ready == [w2, w3]


CORES = ["python"] + (["compiled"] if _compiled.COMPILED_AVAILABLE else [])


def _model_trail(script):
    """The reference: the Python transitions' var state after each step, and the ops each step grants."""
    from depengine import _op, _var

    v, running, trail, n = var(), [], [], 0
    for action in script:  # a pushed op names v once: one write
        ready = []
        if action == "done" and running:
            op = running.pop(0)
            if op.writes:
                _var.complete_write(v, 1, ready)
            else:
                _var.complete_read(v, ready)
            trail.append(("done", op._name))
        elif action != "done" and n < 8:
            n += 1
            op = make_op(_op.new_op, f"{action}{n}", **{"reads" if action == "r" else "writes": [v]})
            if _var.append_read(v, op) if action == "r" else _var.append_write(v, op, 1):
                ready.append(op)
            trail.append((action, op._name))
        else:
            continue
        running.extend(ready)
        trail[-1] = (*trail[-1], full_state(v), [op._name for op in ready])
    return trail


@pytest.mark.parametrize("core", CORES)
@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["r", "w", "done"]), max_size=24))
def test_each_core_moves_a_var_through_the_reference_states(core, script):
    """A random script of pushes (at most 8, each blocked on a gate) and completions (the earliest
    granted op's gate opens) on one var of a real engine: after each step the var's state becomes the
    one the Python transitions give, and the ops they grant are the ones that start."""
    eng = de.Engine("threaded", workers=8, core=core)
    gates = {}
    try:
        v = eng.new_var("v")
        for *step, expected, granted in _model_trail(script):
            if step[0] == "done":
                gates[step[1]].open()
            else:
                gates[step[1]] = g = Gate()
                rw = {"reads": [v]} if step[0] == "r" else {"writes": [v]}
                eng.push(g, name=step[1], **rw)
            for name in granted:
                assert gates[name].started.wait(10), (step, name)
            deadline = time.monotonic() + 10
            while state(v) != expected and time.monotonic() < deadline:
                time.sleep(0)  # a poll, not an ordering: the completion may still be under way
            assert state(v) == expected, (step, script)
    finally:
        for g in gates.values():
            g.open()
        eng.close()
