"""Hostile and broken peers, run under ``mpiexec`` by tests/test_mpi_ranks.py.

Each scenario takes the command-line argument and returns ``(rank, result)``
(see tests/mpi_programs.py, which dispatches here).

- ``mismatch``: ranks whose buffers for the same var differ in dtype or size;
- ``forged``: rank 1 writes raw MPI messages on the tags rank 0 expects
  (garbage, a size that lies, an oversized header, a payload of the wrong
  size, failures that name types to look up or carry unreadable JSON);
- ``killed``: the last rank kills itself while the others wait on it;
- ``stopped``: the last rank stops (SIGSTOP) while the others wait on it;
- ``idle``: the CPU time a rank spends while it waits one second for a peer.

Every receiving buffer is a slice of a larger array whose other elements are
canaries: nothing may be written past the buffer, and nothing into it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import numpy as np

import depengine as de
from depengine.mpi import wire


def write_result(out: str, rank: int, result: dict) -> None:
    """Write ``rank{rank}.json`` whole or not at all: a rank killed mid-write (the launcher ends the
    survivors of a dead rank) leaves no half-written file for the test to misread."""
    path = os.path.join(out, f"rank{rank}.json")
    with open(path + ".part", "w") as f:
        json.dump(result, f)
    os.replace(path + ".part", path)

TIMEOUT = 60
CANARY = 7.25


def _guarded(n: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """A buffer of ``n`` elements inside a larger array full of canaries."""
    outer = np.full(n + 16, CANARY, dtype=dtype)
    return outer, outer[8:8 + n]


def _intact(outer: np.ndarray) -> bool:
    """The canaries around the buffer are untouched (what lands in the buffer itself is checked apart)."""
    return bool(np.all(outer[:8] == CANARY) and np.all(outer[-8:] == CANARY))


def _error(fn) -> str:
    try:
        fn()
    except BaseException as exc:  # the scenario reports what was raised, whatever it is
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def scenario_mismatch(arg: str) -> tuple[int, dict]:
    """The last rank's buffers differ from rank 0's: same bytes other dtype, more elements, 1 MiB."""
    eng = de.Engine("mpi", workers=2)
    last = eng.size - 1
    theirs = [np.zeros(8, np.float32), np.zeros(8), np.zeros(1 << 17)]
    result = {}
    outers, ys = [], []
    for i, buf in enumerate(theirs):
        outer, mine = _guarded(4)
        outers.append(outer)
        x = eng.new_var(f"x{i}", owner=last, buffer=buf if eng.rank == last else mine)
        y = eng.new_var(f"y{i}", owner=0, buffer=np.zeros(1))
        eng.push(lambda ctx, buf=buf: buf.fill(1), writes=[x], name=f"fill x{i}")
        eng.push(lambda ctx: None, reads=[x], writes=[y], name=f"use x{i}")
        ys.append(y)
    if eng.rank == 0:
        for i, y in enumerate(ys):
            result[f"x{i}"] = _error(lambda y=y: eng.wait_for_var(y, TIMEOUT))
            result[f"x{i} canaries"] = bool(np.all(outers[i] == CANARY))  # around and in the buffer
    result["close"] = _error(eng.close)  # the var shapes entered the op-sequence hash: close says so
    return eng.rank, result


def _forge(MPI, comm, dest: int, tag: int, messages: list[bytes]) -> None:
    for m in messages:
        comm.Send([m, MPI.BYTE], dest, tag)


def _header(serial: int, gen: int, dtype: str, shape: tuple, nbytes: int, body: int, inline: bool) -> bytes:
    dims = list(shape) + [0] * (wire.MAX_DIMS - len(shape))
    return wire._STRUCT.pack(wire.MAGIC, wire.FAILURE if body else wire.DATA, len(shape), 0,
                             wire.FLAG_INLINE if inline else 0, dtype.encode(), serial, gen, nbytes, body,
                             *dims)


def _failure(serial: int, description: bytes) -> bytes:
    return _header(serial, 0, "<f8", (4,), 32, len(description), True) + description + bytes(32)


def scenario_forged(arg: str) -> tuple[int, dict]:
    """Rank 1 forges the messages of rank 0's receives, then pushes the legitimate ops as well; on the
    lane's communicator when ``arg`` is ``lane`` (depengine/mpi/lane.py), else on Python's."""
    from mpi4py import MPI

    eng = de.Engine("mpi", workers=2)
    if arg == "lane" and eng._transport.lane is None:
        eng.close()
        return eng.rank, {"lane": False}
    if eng.size < 2:
        raise SystemExit("forged needs two ranks")
    lying = json.dumps({"module": "antigravity", "type": "Boom", "args": None, "message": "imported?",
                        "traceback": "", "rank": 1, "op": "x"}).encode()
    not_exc = json.dumps({"module": "os", "type": "system", "args": ["echo pwned"], "message": "m",
                          "traceback": "", "rank": 1, "op": "x"}).encode()
    cases = {  # name -> the messages rank 1 sends in place of transfer #i
        "garbage": lambda s: [b"\x00garbage" * 12],
        "oversized": lambda s: [bytes(100_000)],
        "lying size": lambda s: [_header(s, 0, "<f8", (4,), 10**12, 0, False), bytes(64)],
        "wrong payload": lambda s: [_header(s, 0, "<f8", (4,), 32, 0, False), bytes(4096)],
        "bad json": lambda s: [_failure(s, b"{not json")],
        "unimported type": lambda s: [_failure(s, lying)],
        "not an exception": lambda s: [_failure(s, not_exc)],
    }
    outers, ys, names = [], [], list(cases)
    for i, name in enumerate(names):
        outer, mine = _guarded(4)
        outers.append(outer)
        x = eng.new_var(f"x{i}", owner=1, buffer=mine)
        ys.append(eng.new_var(f"y{i}", owner=0, buffer=np.zeros(1)))
        if eng.rank == 1:  # before the legitimate transfer #i: same source, same tag, so it comes first
            comm = eng._transport.fast if arg == "lane" else eng._transport.data  # the lane's, or Python's
            _forge(MPI, comm, 0, i, cases[name](eng._mvar(x, "x").serial))
        eng.push(lambda ctx: None, reads=[x], writes=[ys[i]], name=f"use x{i}")
    result = {}
    if eng.rank == 0:
        for i, name in enumerate(names):
            result[name] = _error(lambda i=i: eng.wait_for_var(ys[i], TIMEOUT))
            result[f"{name} canaries"] = _intact(outers[i])
            if result[name].startswith("TransferError") and "cannot read" not in result[name]:
                result[f"{name} canaries"] &= bool(np.all(outers[i][8:-8] == CANARY))  # not written either
        result["antigravity imported"] = "antigravity" in sys.modules
    result["close"] = _error(eng.close)
    return eng.rank, result


def _lose_last_rank(how: signal.Signals) -> tuple:
    """Every rank waits on what the last one writes; the last one sends itself ``how`` first.
    Returns the engine and what the survivors saw."""
    eng = de.Engine("mpi", workers=2)
    last = eng.size - 1
    v = eng.new_var("v", owner=last, buffer=np.zeros(4))
    ys = [eng.new_var(f"y{r}", owner=r, buffer=np.zeros(1)) for r in range(eng.size)]
    eng.wait_all(TIMEOUT)  # every rank is past start-up
    if eng.rank == last:
        os.kill(os.getpid(), how)
    eng.push(lambda ctx: None, writes=[v], name="never runs")
    for r in range(last):
        eng.push(lambda ctx: None, reads=[v], writes=[ys[r]], name=f"reader{r}")
    start = time.monotonic()
    result = {"wait_all": _error(lambda: eng.wait_all(TIMEOUT)), "seconds": time.monotonic() - start}
    result["close"] = _error(eng.close)
    result["total"] = time.monotonic() - start
    return eng, result


def scenario_killed(arg: str) -> tuple[int, dict]:
    """The last rank dies (SIGKILL) before it writes what the others wait for."""
    eng, result = _lose_last_rank(signal.SIGKILL)
    return eng.rank, result


def scenario_stopped(arg: str) -> tuple[int, dict]:
    """The last rank stops (SIGSTOP: alive to the launcher, silent to the others) before its write."""
    eng, result = _lose_last_rank(signal.SIGSTOP)
    out = os.environ.get("MPIRESULT_DIR", ".")
    write_result(out, eng.rank, result)
    if eng.rank == 0:  # once every survivor wrote its result, end the stopped rank so that mpiexec returns
        files = [os.path.join(out, f"rank{r}.json") for r in range(eng.size - 1)]
        deadline = time.monotonic() + TIMEOUT
        while not all(os.path.exists(f) for f in files) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(eng._transport.peers.identities[eng.size - 1]["pid"], signal.SIGKILL)
    return eng.rank, result


def scenario_idle(arg: str) -> tuple[int, dict]:
    """Every rank waits about a second on the last one; how much CPU does waiting cost?"""
    eng = de.Engine("mpi", workers=1)
    last = eng.size - 1
    v = eng.new_var("v", owner=last, buffer=np.zeros(1 << 10))
    ys = [eng.new_var(f"y{r}", owner=r, buffer=np.zeros(1)) for r in range(eng.size)]
    eng.push(lambda ctx: None, writes=[v], name="warm up")
    eng.wait_all(TIMEOUT)
    wall, cpu = time.monotonic(), time.process_time()
    eng.push(lambda ctx: threading.Event().wait(1.0), writes=[v], name="a long op")  # blocks, holds no CPU
    for r in range(eng.size):
        eng.push(lambda ctx: None, reads=[v], writes=[ys[r]], name=f"reader{r}")
    eng.wait_all(TIMEOUT)
    result = {"wall": time.monotonic() - wall, "cpu": time.process_time() - cpu}
    eng.close()
    return eng.rank, result


SCENARIOS = {"mismatch": scenario_mismatch, "forged": scenario_forged, "killed": scenario_killed,
             "stopped": scenario_stopped, "idle": scenario_idle}
