"""The mpi engine's parts that need no MPI world: the wire format, failures, liveness, traces.

Nothing here initialises MPI in the test process; runs on ranks are in
tests/test_mpi_ranks.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import depengine as de
from depengine._options import ENGINE_TYPES as KINDS
from depengine.mpi import MpiUnavailableError, RemoteError, RemoteTraceback, TransferError, wire
from depengine.mpi.peers import Peers, process_identity
from depengine.mpi.traces import merge
from tests.mpirun import ROOT


class Boom(Exception):
    pass


# ------------------------------------------------------------------- wire format
@pytest.mark.parametrize("shape,dtype", [((4,), np.float64), ((3, 5), np.int32), ((), np.bool_),
                                         ((2000,), np.float64), ((7, 3), np.complex128)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_a_transfer_decodes_to_what_was_sent(shape, dtype, order):
    src = np.asarray(np.arange(int(np.prod(shape))).reshape(shape).astype(dtype), order=order)
    raw = src.reshape(-1, order="A").view(np.uint8)
    parts = wire.encode(3, 9, src, order if src.ndim > 1 else "C", raw)
    h = wire.decode_header(parts[0][:wire.HEADER_SIZE] if len(parts) > 1 else parts[0])
    assert (h.serial, h.gen, h.shape, h.dtype) == (3, 9, shape, np.dtype(dtype))
    assert (h.nbytes, h.body) == (src.nbytes, 0)
    assert h.inline == (src.nbytes <= wire.INLINE_MAX) == (len(parts) == 1)
    dst = np.zeros(shape, dtype=dtype, order=order)
    assert wire.mismatch(h, 3, 9, dst, order if src.ndim > 1 else "C") is None
    payload = parts[0][wire.HEADER_SIZE:] if h.inline else bytes(parts[1])
    dst.reshape(-1, order="A").view(np.uint8)[:] = np.frombuffer(payload, np.uint8)
    assert np.array_equal(dst, src)


@pytest.mark.parametrize("data,fragment", [
    (b"short", "too short"),
    (b"XXXX" + bytes(wire.HEADER_SIZE), "not a depengine transfer"),
    (wire.MAGIC + bytes([9]) + bytes(wire.HEADER_SIZE), "corrupt"),
])
def test_broken_headers_raise_transfer_errors(data, fragment):
    with pytest.raises(TransferError, match=fragment):
        wire.decode_header(data)


def test_a_header_whose_inline_size_lies_is_rejected():
    src = np.zeros(4)
    msg = wire.encode(0, 0, src, "C", src.view(np.uint8))[0]
    with pytest.raises(TransferError, match="announces 32 inline bytes but its message holds 31"):
        wire.decode_header(msg[:-1])
    bad_dtype = bytearray(msg)
    bad_dtype[8:16] = b"<q\xff\x00\x00\x00\x00\x00"
    with pytest.raises(TransferError, match="unknown dtype code"):
        wire.decode_header(bytes(bad_dtype))


def test_mismatch_names_what_differs():
    src = np.zeros(4, np.float32)
    h = wire.decode_header(wire.encode(2, 5, src, "C", src.view(np.uint8))[0])
    assert "var #2 v5 where var #2 v4" in wire.mismatch(h, 2, 4, np.zeros(4, np.float32), "C")
    why = wire.mismatch(h, 2, 5, np.zeros(2), "C")
    assert "float32 (4,)" in why and "float64 (2,)" in why and "[16 bytes]" in why


def test_buffers_that_cannot_travel_are_refused():
    with pytest.raises(ValueError, match="objects"):
        wire.dtype_code(np.dtype(object))


# ------------------------------------------------------------------- failures
def _raise(exc):
    try:
        raise exc
    except BaseException as e:
        return e


def test_a_failure_is_rebuilt_with_its_type_message_and_remote_traceback():
    body = wire.failure_body(_raise(Boom("it broke", 3)), rank=1, op_name="step4")
    exc = wire.failure_from_body(body, src=1, dst=0, var_name="x")
    assert type(exc) is Boom and exc.args == ("it broke", 3)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "Boom: ('it broke', 3)" in exc.__cause__.text and exc.__cause__.rank == 1
    assert any("rank 1" in n and "'step4'" in n and "var 'x'" in n for n in exc.__notes__)


def test_a_forwarded_failure_keeps_its_origin():
    first = wire.failure_from_body(wire.failure_body(_raise(KeyError("k")), 2, "origin"), 2, 1, "x")
    again = wire.failure_from_body(wire.failure_body(first, 1, "relay"), 1, 0, "x")
    assert type(again) is KeyError and str(again) == "'k'"
    assert again.__cause__.rank == 2 and again.__cause__.op == "origin"


def test_unknown_types_become_remote_errors_and_nothing_is_imported():
    assert "antigravity" not in sys.modules
    names = [("antigravity", "Boom"), ("os", "system"), (__name__, "<locals>.X"), ("json", "loads")]
    for module, name in names:
        body = json.dumps({"module": module, "type": name, "args": None, "message": "m", "traceback": "t",
                           "rank": 1, "op": "o"}).encode()
        exc = wire.failure_from_body(body, 1, 0, "x")
        assert isinstance(exc, RemoteError) and exc.type_name == name and exc.message == "m"
    assert "antigravity" not in sys.modules


@pytest.mark.parametrize("body", [b"\xff\xfe", b"[]", b'{"module": 1}', b"{not json",
                                  json.dumps({"module": "m", "type": "T", "args": [{"a": 1}], "message": "m",
                                              "traceback": "", "rank": 0, "op": "o"}).encode()])
def test_unreadable_failures_fail_the_var_with_a_transfer_error(body):
    exc = wire.failure_from_body(body, 3, 1, "y")
    assert isinstance(exc, TransferError) and "var 'y'" in str(exc) and "rank 3" in str(exc)


def test_constructors_that_want_other_arguments_keep_the_message():
    class Odd(Exception):
        def __init__(self, code):
            super().__init__(f"code {code}")

    Odd.__qualname__ = "Odd"
    globals()["Odd"] = Odd
    try:
        exc = wire.failure_from_body(wire.failure_body(_raise(Odd(5)), 0, "o"), 0, 1, "x")
        assert type(exc) is Odd and str(exc) == "code 5"
    finally:
        del globals()["Odd"]


# ----------------------------------------------------------------- the engine hook
def test_an_always_run_op_sees_the_failure_it_would_be_skipped_for():
    with de.Engine("threaded", workers=1) as eng:
        v = eng.new_var("v")
        eng.push(lambda ctx: _raise_now(Boom("x")), writes=[v])
        seen = []
        eng.push(lambda ctx: seen.append(ctx.input_failure), reads=[v], always_run=True)
        with pytest.raises(Boom):
            eng.wait_for_var(v)
        eng.push(lambda ctx: seen.append(ctx.input_failure), reads=[v], always_run=True)  # after the report
        eng.wait_all()
    assert isinstance(seen[0], Boom) and seen[1] is None


def _raise_now(exc):
    raise exc


# ------------------------------------------------------------ kinds, imports, errors
def test_mpi_is_an_engine_kind():
    assert "mpi" in KINDS
    with pytest.raises(ValueError, match="mpi"):
        de.Engine("bogus")


def test_importing_depengine_does_not_import_mpi4py():
    out = subprocess.run([sys.executable, "-c", "import depengine, depengine.mpi, sys; "
                          "print('mpi4py' in sys.modules)"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_without_mpi4py_the_engine_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(MpiUnavailableError, match=r"pip install 'depengine\[mpi\]'"):
        de.Engine("mpi", workers=1)
    with pytest.raises(ImportError):
        de.Engine("mpi")


# ------------------------------------------------------------------- liveness
def test_a_dead_or_zombie_process_is_a_dead_peer():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    ident = process_identity()
    zombie = dict(ident, pid=child.pid, start="")
    while _state(child.pid) != "Z":
        os.sched_yield()  # wait for the child to exit (it stays a zombie: not reaped yet)
    peers = Peers(0, [ident, zombie, dict(ident)], timeout=30)
    found = peers.check([1, 2], now=peers.last_heard[0], ping=lambda p: None)
    assert [p for p, _ in found] == [1] and "rank 1 died" in found[0][1]
    child.wait()
    assert peers.check([1, 2], now=peers.last_heard[0], ping=lambda p: None) == []  # reported once


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_a_silent_peer_is_pinged_then_declared_failed():
    ident = dict(process_identity(), host="elsewhere")
    peers = Peers(0, [process_identity(), ident], timeout=5)
    pinged = []
    t0 = peers.last_heard[1]
    assert peers.check([1], t0 + 1, pinged.append) == [] and pinged == [1]
    peers.heard(1)
    assert peers.check([1], peers.last_heard[1] + 4, pinged.append) == []
    found = peers.check([1], peers.last_heard[1] + 6, pinged.append)
    assert found and "answered nothing for 6.0 s" in found[0][1] and "DEPENGINE_MPI_TIMEOUT=5" in found[0][1]


def test_the_timeout_variable_is_checked(monkeypatch):
    monkeypatch.setenv("DEPENGINE_MPI_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="DEPENGINE_MPI_TIMEOUT='soon'"):
        Peers(0, [process_identity()])
    monkeypatch.setenv("DEPENGINE_MPI_TIMEOUT", "inf")
    assert Peers(0, [process_identity()]).timeout == float("inf")


# ------------------------------------------------------------------- traces
def _op(op_id, name, reads=(), writes=(), start=0):
    return {"id": op_id, "name": name, "engine": 0, "device": "cpu(0)", "kind": "normal", "priority": 0,
            "lane": "depengine-cpu-0", "reads": list(reads), "writes": list(writes), "push": start,
            "ready": start, "start": start, "end": start + 10, "state": "done", "error": None,
            "gpu_end": None}


def test_merged_traces_order_ops_by_push_and_link_sends_to_receives():
    # rank 0 owns x (serial 0) and sends v1 to rank 1; rank 1 reads it in op "use"
    r0 = {"rank": 0, "origin": 1000, "clock": 0, "waits": [],
          "ops": [_op(0, "fill", writes=[(0, "x", 1)], start=0),
                  _op(1, "mpi send", reads=[(0, "x", 1)], start=20)],
          "log": [[0, 1, 2, "fill", None], [1, 2, 0, "mpi send", ["send", 0, 1, 0, "x", 1, 8]]]}
    r1 = {"rank": 1, "origin": 1005, "clock": 0, "waits": [],
          "ops": [_op(0, "mpi recv", writes=[(0, "x", 1)], start=10),
                  _op(1, "use", reads=[(0, "x", 1)], start=40)],
          "log": [[0, 2, 1, "mpi recv", ["recv", 0, 1, 0, "x", 1, 8]], [1, 2, 2, "use", None]]}
    trace = merge([r0, r1])
    assert [(r.name, r.device) for r in trace.ops] == [
        ("fill", "rank 0 cpu(0)"), ("mpi send", "rank 0 cpu(0)"), ("mpi recv", "rank 1 cpu(0)"),
        ("use", "rank 1 cpu(0)")]
    assert trace.ops[2].start == 15  # rank 1's origin is 5 ns after rank 0's
    edges = {(trace.op(e.src).name, trace.op(e.dst).name, e.hazard) for e in trace.edges()}
    assert {("fill", "mpi send", "RAW"), ("mpi send", "mpi recv", "RAW"), ("mpi recv", "use", "RAW")} <= edges
    assert trace.transfers == [{"var": "x", "version": 1, "src": 0, "dst": 1, "bytes": 8, "send": (0, 1),
                                "recv": (0, 2)}]
    assert [trace.op(k).name for k in trace.critical_path()] == ["fill", "mpi send", "mpi recv", "use"]


def test_a_trace_keeps_its_origin():
    with de.Engine("threaded", workers=1) as eng, de.profile() as prof:
        eng.push(lambda ctx: None, writes=[eng.new_var()])
        eng.wait_all()
    assert prof.trace().origin_ns > 0


def test_arrays_have_owner_ranks_only_on_an_mpi_engine(nd_engine):
    import ops as nd

    a = nd.array([1.0, 2.0], owner=0)
    assert a.owner == 0 and nd.zeros(3, owner=None).owner == 0
    with pytest.raises(ValueError, match="owner ranks on Engine"):
        nd.ones(3, owner=1)
    with pytest.raises(ValueError, match="grid"):
        nd.linalg.cholesky(nd.array(np.eye(4)), tile=2, grid=(2, 1))
