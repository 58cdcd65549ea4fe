"""The lane: small transfers sent and received in C (``_core.MpiLane``, depengine/_core_lane.c).

A var whose bytes fit ``LANE_MAX`` travels as one message on a communicator
of its own: header and bytes.  The send op is a plain op that posts the
message from C (the lane keeps a copy until MPI is done with it, so the op
ends at once).  The recv op registers the exact header it expects; whichever
thread looks at MPI next (the progress thread, spinning without the GIL while
the rank is idle; a worker after each op) matches the message, and when its
header is byte for byte the expected one copies the bytes and completes the
recv op in C.  Everything else (a failed version, a header that does not fit,
a forged message) reaches Python with its bytes and is checked as
transport.py checks any message.  Every rank decides alike which transfers
take the lane: all ranks must have it (MPICH's int handles, a little-endian
host, the compiled core under a threaded local engine, ``DEPENGINE_MPI_LANE``
not ``0``), and the var's bytes must fit.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

from . import wire
from .spin import _signed

__all__ = ["GEN_AT", "LANE_MAX", "LaneTransport", "header", "make_lane", "with_gen"]

_log = logging.getLogger("depengine")
LANE_MAX = wire.INLINE_MAX   # bytes of a var that travel on the lane
GEN_AT = 24                  # offset of the version in a header (wire._STRUCT)


def header(mv) -> bytes:
    """The header of a clean transfer of ``mv`` at version 0 (the lane patches the version)."""
    head = mv.head
    if head is None:
        head = mv.head = wire.encode(mv.serial, 0, mv.buffer, mv.order, mv.raw)[0][:wire.HEADER_SIZE]
    return head


def with_gen(head: bytes, gen: int) -> bytes:
    return head[:GEN_AT] + gen.to_bytes(8, "little") + head[GEN_AT + 8:]


def _status_offsets(MPI) -> tuple[int, int] | None:
    """Where MPI_SOURCE and MPI_TAG sit in an MPI_Status, found through mpi4py's own Status."""
    st = MPI.Status()
    st.Set_source(0x5A5A17)
    st.Set_tag(0x3C3C29)
    raw = ctypes.string_at(MPI._addressof(st), MPI._sizeof(MPI.Status))
    src, tag = raw.find((0x5A5A17).to_bytes(4, "little")), raw.find((0x3C3C29).to_bytes(4, "little"))
    return (src, tag) if src >= 0 and tag >= 0 and src % 4 == 0 and tag % 4 == 0 else None


def make_lane(MPI, comm, core, library):
    """The lane on ``comm`` (a communicator of its own), or None where this rank cannot run it
    (``DEPENGINE_MPI_LANE=0``, handles other than MPICH's ints, a big-endian host, MPI's functions
    not found)."""
    if os.environ.get("DEPENGINE_MPI_LANE", "").strip() == "0" or sys.byteorder != "little" or \
            any(MPI._sizeof(t) != 4 for t in (MPI.Comm, MPI.Message, MPI.Request)) or \
            MPI._sizeof(MPI.Status) > 64:
        return None
    offsets = _status_offsets(MPI)
    names = ("MPI_Isend", "MPI_Test", "MPI_Improbe", "MPI_Mrecv", "MPI_Get_count")
    try:
        fns = tuple(ctypes.cast(getattr(library, n), ctypes.c_void_p).value for n in names)
    except AttributeError:
        return None
    if offsets is None or not all(fns):
        return None
    C = sys.modules[core.__class__.__module__]
    return C.MpiLane(core, fns, _signed(MPI._handleof(comm), 4), _signed(MPI._handleof(MPI.BYTE), 4),
                     MPI.ANY_SOURCE, MPI.ANY_TAG, *offsets)


class LaneTransport:
    """What the Transport (transport.py) does with its lane: set it up, finish the receives C
    hands over, and fail those a gone peer will never serve."""

    def _lane_setup(self, MPI, comm, core, allowed: bool) -> None:
        """Collective: the lane when every rank can run it, else None."""
        self.fast = comm.Dup()
        lib = self.spinner.library
        runs = allowed and core is not None and lib is not None
        mine = make_lane(MPI, self.fast, core, lib) if runs else None
        self.lane = mine if comm.allreduce(mine is not None, op=MPI.LAND) else None
        self.spinner.lane = self.lane
        # with the lane, a worker looks at MPI after each op from C (Core.set_after_op): no ThenPoll
        self.after_op_in_c = self.lane is not None
        self._core = core
        if self.after_op_in_c:
            core.set_after_op(self.lane, self.watch.ctypes.data, self.poll_after_op,
                              self.spinner.kick.ctypes.data)

    def _lane_close(self) -> None:
        """Once the local engine is closed: the core lets go of the lane."""
        if self.after_op_in_c:
            self._core.set_after_op(None, 0, None, 0)

    def _lane_expect(self, ctx, done):
        """(self._lock held) Register a receive in the lane: a lane receive (ctx = (src, seq, tag, gen,
        mv, header)) by its exact header, a receive in Python (ctx = its Incoming) as a forward entry."""
        if ctx.__class__ is tuple:
            return self.lane.expect(ctx[0], ctx[2], ctx[5], ctx[4].raw, done, ctx)
        return self.lane.expect(ctx.src, ctx.key[1], None, ctx.raw, done, ctx)

    def lane_recv(self, ctx, done) -> None:
        """The recv op's body on the lane: ctx = (src, seq, tag, gen, mv, header)."""
        src, key = ctx[0], (ctx[0], ctx[2])
        # under the lock _match holds (a message is in _arrived or matched by the lane) and _peer_gone
        # takes the lane's receives under (a goodbye or a death is seen here or handled there)
        with self._lock:
            python = src in self.peers.dead or src in self._byes or key in self._arrived
            items = None if python else self._lane_expect(ctx, done)
        if python:  # refused, or its sender did not take the lane: transport.expect says which
            self.expect(self._lane_incoming(ctx, done))
        elif items:
            self._lane_finish(items, quiet=True)

    def _lane_claim(self, key):
        """(self._lock held) A message on the data communicator for a receive registered in the lane
        (its sender did not take the lane): the receive moves to Python."""
        got = self.lane.take_key(*key)
        if got is None:
            return None
        ctx, done = got
        inc = ctx if not isinstance(ctx, tuple) else self._lane_incoming(ctx, done)
        self._expected[key] = inc
        self.watch[0] = 1
        return inc

    def _lane_poll(self) -> int:
        items = self.lane.poll()
        if items:
            self._lane_finish(items)
        return len(items)

    def _lane_finish(self, items: list, quiet: bool = False) -> None:
        """Finish the receives the lane hands over; ``quiet``: from another receive's op, which their
        errors (engine bugs) must not fail, so they are logged."""
        for ctx, done, msg in items:
            try:
                self._lane_item(ctx, done, msg)
            except Exception:
                if not quiet:
                    raise
                _log.exception("depengine: finishing a receive of the MPI lane failed")

    def _lane_item(self, ctx, done, msg) -> None:
        if msg is None:  # received whole: only done() is left
            done()
            return
        if msg.__class__ is int:  # too large for the lane: not received
            inc = ctx if not isinstance(ctx, tuple) else self._lane_incoming(ctx, done)
            self._finish(inc, wire.TransferError(
                f"var {inc.name!r} v{inc.gen}: the message rank {inc.src} sent to rank {self.rank} holds "
                f"{msg} bytes: it is not a transfer of the lane; the buffer was not written"))
            return
        if isinstance(ctx, tuple):
            inc = self._lane_incoming(ctx, done)
        else:  # a receive in Python (transport.expect) whose sender took the lane
            inc = ctx
            with self._lock:
                if inc.state != 0 or self._expected.get(inc.key) is not inc:
                    return  # (its own message came first)
                del self._expected[inc.key]
        where = f"var {inc.name!r} v{inc.gen}: the message rank {inc.src} sent to rank {self.rank}"
        try:
            h = wire.decode_header(msg)
        except wire.TransferError as exc:
            self._finish(inc, wire.TransferError(f"{where}: {exc}"))
            return
        why = wire.mismatch(h, inc.serial, inc.gen, inc.buffer, inc.order)
        if why is None and not h.inline:
            why = "a message of the lane must hold the whole transfer"
        if why is not None:
            why = f"{where} does not fit: {why}; the buffer was not written"
            self._finish(inc, wire.TransferError(why))
        else:
            self._inline(inc, h, msg)

    def _lane_incoming(self, ctx, done):
        from .transport import Incoming

        src, seq, tag, gen, mv, _ = ctx
        return Incoming(src, seq, tag, mv.serial, gen, mv.name, mv.buffer, mv.raw, mv.order, done)

    def _lane_gone(self, taken: list, error_of) -> None:
        """The lane's receives from a peer that died or said goodbye (``taken`` out of the lane): fail
        those ``error_of`` condemns, register the others again.  Receives in Python (forward entries,
        whose ctx is their Incoming) are _peer_gone's: they only go back."""
        for ctx, done in taken:
            forward = not isinstance(ctx, tuple)
            err = None if forward else error_of(self._lane_incoming(ctx, done))
            if err is not None:
                done(err)
                continue
            with self._lock:
                if forward and self._expected.get(ctx.key) is not ctx:
                    continue  # (finished meanwhile)
                items = self._lane_expect(ctx, done)
            if items:
                self._lane_finish(items, quiet=True)

    def _lane_busy(self) -> bool:
        waiting, sending, *_ = self.lane.counts()
        return bool(waiting or sending)
