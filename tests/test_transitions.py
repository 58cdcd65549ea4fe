"""One transition at a time, with the whole resulting var state asserted."""

from __future__ import annotations

import pytest

import depengine as de
from tests.conftest import Gate


def state(v):
    return {
        "nread": v._nread,
        "writing": v._writing,
        "queue": [op.name for op in v._queue],
        "pending_writes": v._pending_writes,
        "version": v.version,
    }


@pytest.fixture
def eng():
    e = de.Engine("threaded", workers=4)
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
        v._check_invariants()

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


def test_check_invariants_catches_a_broken_state(eng):
    v = eng.new_var("v")
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
