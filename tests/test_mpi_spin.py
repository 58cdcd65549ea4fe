"""The mpi engine's progress thread waiting in C (depengine/mpi/spin.py, Core.wait_message).

In this process the world has one rank: messages go to this rank itself on a
duplicate of ``MPI.COMM_SELF``, which is all the C loop needs to be checked
(every case is decided by state, none by timing).  The rules on 2 and 3
ranks (tests/mpi_rules.py) and the random programs run with it on the
compiled core, and with the polling thread it replaces on the Python one.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest

import depengine as de
from depengine.mpi.spin import Spinner, spin_window
from tests.mpirun import need_mpi


@pytest.fixture
def self_comm():
    need_mpi()
    from mpi4py import MPI

    comm = MPI.COMM_SELF.Dup()
    yield MPI, comm
    comm.Free()


@pytest.fixture
def core_engine():
    eng = de.Engine("threaded", workers=1)
    try:
        if getattr(eng, "_core", None) is None:
            pytest.skip("the Python engine has no compiled core: its progress thread only polls")
        yield eng
    finally:
        eng.close()


def test_spin_window_reads_the_environment(monkeypatch):
    monkeypatch.delenv("DEPENGINE_MPI_SPIN_US", raising=False)
    assert spin_window() == pytest.approx(2e-3)
    monkeypatch.setenv("DEPENGINE_MPI_SPIN_US", "250")
    assert spin_window() == pytest.approx(250e-6)
    monkeypatch.setenv("DEPENGINE_MPI_SPIN_US", "0")
    assert spin_window() == 0
    for bad in ("fast", "-1", "nan"):
        monkeypatch.setenv("DEPENGINE_MPI_SPIN_US", bad)
        with pytest.raises(ValueError, match="DEPENGINE_MPI_SPIN_US"):
            spin_window()


def test_without_a_compiled_core_or_with_spinning_off_it_only_polls(self_comm, monkeypatch):
    MPI, comm = self_comm
    off = Spinner(MPI, comm, None)
    assert not off.usable and off.has_message()  # "look": the caller's Python probe decides
    monkeypatch.setenv("DEPENGINE_MPI_SPIN_US", "0")
    eng = de.Engine("threaded", workers=1)
    try:
        assert not Spinner(MPI, comm, getattr(eng, "_core", None)).usable
    finally:
        eng.close()


def _send_to_self(MPI, comm, tag):
    return comm.Isend([bytearray(b"x"), MPI.BYTE], 0, tag)


def _receive(MPI, comm, tag, req):
    buf = bytearray(1)
    comm.Recv([buf, MPI.BYTE], 0, tag)
    req.Wait()
    assert bytes(buf) == b"x"


def test_an_idle_engine_sees_a_message_a_kick_or_the_end_of_its_budget(self_comm, core_engine):
    MPI, comm = self_comm
    spin = Spinner(MPI, comm, core_engine._core)
    assert spin.usable, "MPI_Iprobe was not found in the loaded MPI library"
    assert not spin.has_message()
    why, spun = spin.wait(0.0005, 10.0)
    assert why == 4 and spun >= 0.0005  # nothing came: the spin budget ran out first
    assert spin.wait(10.0, 0.0005)[0] == 3  # ... or the wait did
    spin.kick[0] = 1
    assert spin.wait(10.0, 10.0) == (2, 0)  # kicked before it spun at all
    spin.kick[0] = 0
    req = _send_to_self(MPI, comm, 7)
    assert spin.has_message()
    assert spin.wait(10.0, 10.0)[0] == 1
    _receive(MPI, comm, 7, req)
    assert not spin.has_message()


@contextmanager
def _busy_worker(eng):
    """The engine's one worker runs an op until the block ends (or the event it yields is set)."""
    started, release = threading.Event(), threading.Event()
    eng.push(lambda ctx: (started.set(), release.wait(30)), [], [eng.new_var("v")], "busy")
    assert started.wait(30)
    try:
        yield release
    finally:
        release.set()
        eng.wait_all(30)


def test_a_busy_engine_sleeps_instead_of_probing_until_its_worker_is_idle(self_comm, core_engine):
    MPI, comm = self_comm
    spin = Spinner(MPI, comm, core_engine._core)
    req = _send_to_self(MPI, comm, 8)
    try:
        with _busy_worker(core_engine) as release:
            assert spin.wait(10.0, 0.002) == (3, 0)  # a message is there, but a worker runs an op
            assert spin.has_message()  # what a worker sees after its op
            # the worker finishing its op wakes the waiter, which then sees the message
            threading.Timer(0.05, release.set).start()
            assert spin.wait(10.0, 10.0)[0] == 1
    finally:
        _receive(MPI, comm, 8, req)


def test_a_kick_wakes_a_waiter_asleep_behind_a_busy_worker(self_comm, core_engine):
    MPI, comm = self_comm
    spin = Spinner(MPI, comm, core_engine._core)

    def kick():
        spin.kick[0] = 1
        spin.wake()
    with _busy_worker(core_engine):
        threading.Timer(0.05, kick).start()
        assert spin.wait(10.0, 20.0) == (2, 0)  # not the 20 s limit: the kick woke it


def test_a_moving_push_count_means_a_pusher_needs_the_core(self_comm, core_engine):
    """While the engine's push count moves (a thread pushes), the waiter sleeps between looks
    rather than spin on the core the pusher needs: over 0.2 s it spins a small part of them (as
    long as the pushing thread itself got a core: it counts its rounds)."""
    MPI, comm = self_comm
    spin = Spinner(MPI, comm, core_engine._core)
    stop = threading.Event()
    rounds = [0]

    def pusher():
        while not stop.is_set():
            spin.pushes[0] += 1
            rounds[0] += 1
            stop.wait(20e-6)
    t = threading.Thread(target=pusher)
    t.start()
    try:
        why, spun = spin.wait(10.0, 0.2)
    finally:
        stop.set()
        t.join()
    assert why == 3
    if rounds[0] >= 1000:  # it pushed at least every 200 µs on average
        assert spun < 0.1, (spun, rounds[0])  # spinning all along would be 0.2
    why, spun = spin.wait(0.02, 10.0)  # the count stands still: it spins its budget
    assert why == 4 and spun >= 0.02


def test_the_c_entry_points_reject_bad_arguments(core_engine):
    core = core_engine._core
    with pytest.raises(TypeError, match="integers"):
        core.wait_message(1, 2)
    with pytest.raises(TypeError, match="integers"):
        core.has_message(1, 2, 4)
    with pytest.raises(TypeError):
        core.has_message("a", 0, 4, 0, 0)
    with pytest.raises(ValueError, match="NULL MPI_Iprobe"):
        core.has_message(0, 0, 4, 0, 0)
    with pytest.raises(ValueError, match="handle size"):
        core.wait_message(1, 0, 3, 0, 0, 1, 1, 0, 0, None)
    with pytest.raises(ValueError, match="kick or push count"):
        core.wait_message(1, 0, 4, 0, 0, 0, 1, 0, 0, None)
    with pytest.raises(ValueError, match="spin_ns and max_ns"):
        core.wait_message(1, 0, 4, 0, 0, 1, 1, -1, 0, None)
    with pytest.raises(ValueError, match="spin_ns and max_ns"):
        core.wait_message(1, 0, 4, 0, 0, 1, 1, 0, 1 << 62, None)
    with pytest.raises(TypeError, match="MpiLane or None"):
        core.wait_message(1, 0, 4, 0, 0, 1, 1, 0, 0, object())
