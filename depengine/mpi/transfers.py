"""The send and receive ops the mpi engine pushes to its local engine, and its shutdown.

A send op reads the var and is pushed with ``always_run=True``: when the
version it reads failed, it sends the failure along with the bytes, so the
receiver's copy holds the same bytes, fails with the same exception, and its
dependents are skipped.  A receive op writes the var, also with ``always_run=True``, so it
always consumes its message; its outcome (data or failure) becomes the state
of the receiver's copy.  Both are async ops at a high priority: they only post
MPI requests and return.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from . import wire
from .errors import ProgramMismatchError
from .lane import GEN_AT, LANE_MAX, header, with_gen

__all__ = ["allgather_json", "close", "deadline", "left", "push_recv", "push_send"]

_log = logging.getLogger("depengine")
# transfers start before any user op that is ready at the same time: they only post requests
PRIORITY = 1 << 30


def push_send(engine, mv, dst: int, seq: int, gen: int):
    """Push the op that sends ``mv``'s version ``gen`` to rank ``dst`` (transfer ``seq``)."""
    transport, rank, writer = engine._transport, engine.rank, mv.writer
    lane = transport.lane
    if lane is not None and mv.raw.nbytes <= LANE_MAX:  # a plain op: the lane keeps a copy (lane.py)
        head, tag = header(mv), seq % transport.tag_mod

        def send_small(ctx) -> None:
            refused = transport._send_refused(dst, seq)
            if refused is not None:
                raise refused
            failure = ctx.input_failure
            if failure is None:
                lane.send(dst, tag, head, GEN_AT, gen, mv.raw)
            else:
                body = wire.failure_body(failure, rank, writer)
                lane.send(dst, tag, wire.encode(mv.serial, gen, mv.buffer, mv.order, mv.raw, body, True)[0],
                          GEN_AT, gen, b"")
        return engine._local.push(send_small, (mv.var,), (), "mpi send", PRIORITY, True)

    def send(ctx, done) -> None:
        failure = ctx.input_failure
        body = b"" if failure is None else wire.failure_body(failure, rank, writer)
        transport.send(dst, seq, wire.encode(mv.serial, gen, mv.buffer, mv.order, mv.raw, body), done)
    return engine._local.push_async(send, (mv.var,), (), "mpi send", PRIORITY, True)


def push_recv(engine, mv, src: int, seq: int, gen: int):
    """Push the op that receives ``mv``'s version ``gen`` from rank ``src`` into this rank's copy."""
    from .transport import Incoming

    transport = engine._transport
    tag = seq % transport.tag_mod
    if transport.lane is not None and mv.raw.nbytes <= LANE_MAX:
        ctx = (src, seq, tag, gen, mv, with_gen(header(mv), gen))
        return engine._local.push_async(lambda _, done: transport.lane_recv(ctx, done), (), (mv.var,),
                                        "mpi recv", PRIORITY, True)

    def recv(ctx, done) -> None:
        transport.expect(Incoming(src, seq, tag, mv.serial, gen, mv.name, mv.buffer, mv.raw, mv.order, done))
    return engine._local.push_async(recv, (), (mv.var,), "mpi recv", PRIORITY, True)


def allgather_json(MPI, comm, data: bytes) -> list:
    """Every rank's JSON ``data``, gathered without pickles (start-up only: it blocks)."""
    sizes = np.zeros(comm.Get_size(), dtype=np.int64)
    comm.Allgather(np.array([len(data)], dtype=np.int64), sizes)
    out = bytearray(int(sizes.sum()))
    displs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    comm.Allgatherv([data, MPI.BYTE], [out, (sizes, displs), MPI.BYTE])
    return [json.loads(bytes(out[d:d + s])) for d, s in zip(displs.tolist(), sizes.tolist(), strict=True)]


def deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def close(engine) -> None:
    """Say goodbye, drain the local engine, wait for the others' goodbyes, compare, stop."""
    from .state import describe

    transport = engine._transport
    if transport is not None:
        with engine._lock:
            seq = engine._seq
            counts = {"count": seq.count, "hash": seq.hash, "last": describe(seq.last)}
        transport.bye(counts, engine._sent, engine._recvd)
    engine._local.close()  # transfers that no rank will complete fail at once (see Control.bye)
    if transport is None:
        return
    byes = transport.wait_byes(None)
    dead = dict(transport.peers.dead)
    mine = (counts["count"], counts["hash"])
    differ = [r for r, b in sorted(byes.items()) if (b["count"], b["hash"]) != mine]
    transport.close(free=not dead and not differ and engine._broken is None)
    if differ:
        shown = "; ".join(f"rank {r} closed after {byes[r]['count']} pushes (last: {byes[r]['last']})"
                          for r in differ[:8])
        error = ProgramMismatchError(f"the ranks pushed different op sequences: rank {engine.rank} closed "
                                     f"after {counts['count']} pushes (last: {counts['last']}); {shown}")
        engine._broken = engine._broken or error
        raise error
    if dead:
        _log.error("depengine: rank %d closed its engine; %s", engine.rank, "; ".join(dead.values()))
