"""Moving var versions between ranks, and the thread that makes MPI progress.

Transfers use their own duplicate of the engine's communicator; the k-th
transfer from rank s to rank r has tag k (modulo the MPI tag bound) on both
sides, since every rank plans the same transfers in the same order.

Sending: the send op posts ``Isend``s of the header (and of the payload, for
large transfers) and tests them at once; an eager message completes there
and the op with it.  Receiving is probe-driven: only ``Improbe`` matches a
message, always under one lock, so the messages of one transfer are handled
in the order they arrived.  The recv op registers what it expects (the var,
its version and buffer), takes messages that arrived before it, and handles
them itself; later ones are matched by the progress thread.  Nothing is
received into a var's buffer before its header fits (see wire.py), and a
payload only when MPI reports exactly the buffer's size.

The progress thread never blocks in MPI (MPICH's blocking calls spin a core:
a blocking probe used 1.7 s of CPU in a 2 s wait here).  On the compiled
core it waits in C (spin.py): probing without the GIL while nothing else
runs, asleep while a worker runs an op (workers take arrived messages after
each op) or a thread pushes.  Otherwise, and once that wait's spin budget is
spent, it polls, and between polls that found nothing
it sleeps an eighth of the time it has waited so far (at most 1 ms while
transfers or syncs are pending, 5 ms when idle): a message is noticed within
an eighth of the time it took to come, and a long wait costs a few hundred
polls a second.  Any thread that posts work wakes it.  Control messages
(syncs, goodbyes, pings) are handled by control.py on a second communicator.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque

import numpy as np

from . import wire
from .control import Control
from .errors import RankFailedError, TransferError
from .lane import LaneTransport
from .spin import Spinner

__all__ = ["Incoming", "Transport"]

_log = logging.getLogger("depengine")

HEADER, PAYLOAD, BODY, RECEIVING, FINISHED = range(5)
_MIN_SLEEP = 5e-6   # below this the progress thread polls again at once
_BUSY_CAP = 1e-3    # the longest sleep while transfers or syncs are pending
_SPIN_SLICE = 100e-6  # the longest spin in C while requests or a sync wait for Python (spin.py)
_WAIT_SLICE = 2e-3    # the longest wait in C (peers are checked between waits)
_IDLE_CAP = 5e-3    # ... and while nothing is


class Incoming:
    """A transfer this rank waits for: var ``serial`` at version ``gen`` from rank ``src``."""

    __slots__ = ("busy", "buffer", "declared", "done", "failure", "gen", "key", "name", "order", "queue",
                 "raw", "seq", "serial", "src", "state")

    def __init__(self, src: int, seq: int, tag: int, serial: int, gen: int, name: str, buffer: np.ndarray,
                 raw: np.ndarray, order: str, done) -> None:
        self.src, self.seq, self.key = src, seq, (src, tag)
        self.serial, self.gen, self.name = serial, gen, name
        self.buffer, self.raw, self.order = buffer, raw, order  # raw: the buffer's bytes, 1-d uint8
        self.done = done
        self.state = HEADER
        self.queue: deque = deque()  # (message, size) matched for this transfer, in arrival order
        self.busy = False            # a thread is handling its messages
        self.declared = 0            # size of the failure description announced by the header
        self.failure: BaseException | None = None  # the failure the sender's version carries


class _Pending:
    """MPI requests in flight and what to call once they complete."""

    __slots__ = ("callback", "keep", "peer", "reqs", "seq")

    def __init__(self, reqs, callback, peer: int, seq: int, keep) -> None:
        self.reqs, self.callback, self.peer, self.seq, self.keep = reqs, callback, peer, seq, keep


def _set_timer_slack() -> None:
    """Let this thread's short sleeps be short (Linux rounds them up by 50 µs by default)."""
    try:
        ctypes.CDLL(None).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, 1 µs
    except (OSError, AttributeError):
        pass


class Transport(Control, LaneTransport):
    """Transfers, progress, and (from Control) syncs, goodbyes and liveness."""

    def __init__(self, MPI, comm, rank: int, size: int, identities: list[dict], core=None,
                 lane: bool = False) -> None:
        self.MPI = MPI
        self.rank, self.size = rank, size
        self.data = comm.Dup()
        self.spinner = Spinner(MPI, self.data, core)
        self.watch = np.zeros(1, np.int32)  # set while Python watches transfers (the core's look after ops)
        self._lane_setup(MPI, comm, core, lane)  # small transfers in C (lane.py)
        self.tag_mod = (comm.Get_attr(MPI.TAG_UB) or 32767) + 1
        self._lock = threading.Lock()
        self._cv = threading.Condition(threading.Lock())
        self._kicked = False
        self._waiting = False  # the progress thread waits in C, where it sees new messages (spin.py)
        self._expects = 0      # receives registered while it waited there (each renews its spin budget)
        self._expected: dict[tuple[int, int], Incoming] = {}
        self._arrived: dict[tuple[int, int], list] = {}   # messages matched before their recv op ran
        self._dead_keys: dict[tuple[int, int], int] = {}  # messages of rejected transfers still to drop
        self._active: list[_Pending] = []
        self._testing = threading.Lock()  # held by the thread testing the requests in flight
        self._stop = False
        self._ctl_due = 0.0
        self._st = MPI.Status()  # for poll_after_op (its matches run under the lock)
        Control.__init__(self, comm, identities)
        self._thread = threading.Thread(target=self._run, name="depengine-mpi-progress", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- sending
    def send(self, dst: int, seq: int, parts: list, done) -> None:
        """Send ``parts`` (buffers) to ``dst`` as transfer ``seq``; ``done(error=None)`` once sent."""
        failure = self._send_refused(dst, seq)
        if failure is not None:
            done(failure)
            return
        MPI = self.MPI
        tag = seq % self.tag_mod
        try:
            reqs = [self.data.Isend([p, MPI.BYTE], dst, tag) for p in parts]
            if MPI.Request.Testall(reqs):
                done()
                return
        except MPI.Exception as exc:
            done(RankFailedError(f"sending transfer #{seq} to rank {dst} failed: {exc}"))
            return
        self._watch(_Pending(reqs, lambda err: done(err) if err else done(), dst, seq, parts))

    def _watch(self, pending: _Pending) -> None:
        with self._lock:
            self._active.append(pending)
            self.watch[0] = 1
        self.kick()

    # -------------------------------------------------------------- receiving
    def expect(self, inc: Incoming) -> None:
        """Register ``inc`` and handle whatever of it already arrived (called by the recv op)."""
        MPI = self.MPI
        st = MPI.Status()
        src, tag = inc.key
        later = None
        with self._lock:  # (refused under the lock where _peer_gone looks: a goodbye is never missed)
            refused = self._expect_refused(inc)
            if refused is None:
                self._register(inc)
                if self.lane is not None:  # its sender may have taken the lane (buffers that differ)
                    later = self._lane_expect(inc, inc.done)
                q = inc.queue
                q.extend(self._arrived.pop(inc.key, ()))
                while True:  # matched probes under the lock keep the arrival order
                    msg = self.data.Improbe(src, tag, st)
                    if msg is None:
                        break
                    q.append((msg, st.Get_count(MPI.BYTE)))
                run = bool(q)
                if run:
                    inc.busy = True
        if refused is not None:
            inc.done(refused)
            return
        if later:
            self._lane_finish(later)
        if run:
            self._work(inc)
        elif self._waiting:  # a thread waiting in C sees the message itself (spin.py): no wake-up,
            self._expects += 1  # but a new spin budget
        else:
            self.kick()

    def _register(self, inc: Incoming) -> None:
        self._expected[inc.key] = inc  # (self._lock held)
        self.watch[0] = 1

    def _work(self, inc: Incoming) -> None:
        """Handle ``inc``'s queued messages one by one (the caller set ``inc.busy``)."""
        while True:
            with self._lock:
                if not inc.queue:
                    inc.busy = False
                    return
                msg, count = inc.queue.popleft()
                finished = inc.state == FINISHED
            if finished:
                self._discard(msg)
            else:
                self._step(inc, msg, count)

    def _step(self, inc: Incoming, msg, count: int) -> None:
        MPI = self.MPI
        where = f"var {inc.name!r} v{inc.gen}: the message rank {inc.src} sent to rank {self.rank}"
        if inc.state == HEADER:
            if not wire.HEADER_SIZE <= count <= wire.HEADER_SIZE + wire.INLINE_MAX:
                self._discard(msg)
                self._finish(inc, TransferError(f"{where} holds {count} bytes: it is not a transfer header"))
                return
            buf = bytearray(count)
            msg.Recv([buf, MPI.BYTE])
            try:
                h = wire.decode_header(buf)
            except TransferError as exc:
                self._finish(inc, TransferError(f"{where}: {exc}"))
                return
            why = wire.mismatch(h, inc.serial, inc.gen, inc.buffer, inc.order)
            if why is not None:
                if not h.inline:  # drop the description and the bytes that follow
                    self._drop_next(inc.key, 2 if h.body else 1)
                self._finish(inc, TransferError(f"{where} does not fit: {why}; the buffer was not written"))
            elif h.inline:
                self._inline(inc, h, buf)
            else:
                inc.state, inc.declared = (BODY, h.body) if h.body else (PAYLOAD, 0)
        elif inc.state == BODY:
            if count != inc.declared:
                self._discard(msg)
                self._drop_next(inc.key, 1)
                self._finish(inc, TransferError(f"{where} holds a failure description of {count} bytes where "
                                                f"its header announced {inc.declared}"))
                return
            buf = bytearray(count)
            msg.Recv([buf, MPI.BYTE])
            inc.failure = wire.failure_from_body(bytes(buf), inc.src, self.rank, inc.name)
            inc.state = PAYLOAD
        elif inc.state == PAYLOAD:
            if count != inc.raw.nbytes:
                self._discard(msg)
                self._finish(inc, TransferError(f"{where} holds {count} bytes where its header announced "
                                                f"{inc.raw.nbytes}; the buffer was not written"))
                return
            inc.state = RECEIVING
            req = msg.Irecv([inc.raw, MPI.BYTE])
            if req.Test():
                self._finish(inc, inc.failure)
            else:
                self._watch(_Pending([req], lambda err: self._finish(inc, err or inc.failure), inc.src, -1,
                                     None))
        else:  # a message after the transfer was complete: a sender that does not follow the protocol
            self._discard(msg)

    def _inline(self, inc: Incoming, h, buf) -> None:
        """A whole transfer in one message (its header fits ``inc``): bytes, failure, done."""
        start = wire.HEADER_SIZE + h.body
        if h.body:
            inc.failure = wire.failure_from_body(bytes(buf[wire.HEADER_SIZE:start]), inc.src, self.rank,
                                                 inc.name)
        inc.raw[:] = np.frombuffer(buf, np.uint8, offset=start)
        self._finish(inc, inc.failure)

    def _finish(self, inc: Incoming, error: BaseException | None) -> None:
        with self._lock:
            if inc.state == FINISHED:
                return
            inc.state = FINISHED
            if self._expected.get(inc.key) is inc:
                del self._expected[inc.key]
                if self.lane is not None:
                    self.lane.take_key(*inc.key)
        if error is None:
            inc.done()
        else:
            inc.done(error)

    def _discard(self, msg) -> None:
        """Receive and drop a matched message without storing a byte of it (MPI truncates it)."""
        try:
            msg.Recv([bytearray(0), self.MPI.BYTE])
        except self.MPI.Exception:
            pass

    def _drop_next(self, key, n: int) -> None:
        with self._lock:
            self._dead_keys[key] = self._dead_keys.get(key, 0) + n

    # ----------------------------------------------------------------- progress
    def kick(self) -> None:
        """Wake the progress thread: there is new work to watch."""
        with self._cv:
            self._kicked = True
            self.spinner.kick[0] = 1
            self._cv.notify()
        if self._waiting:  # asleep in C while a worker runs an op
            self.spinner.wake()

    def _run(self) -> None:
        _set_timer_slack()
        st = self.MPI.Status()
        clock = time.perf_counter
        spin = self.spinner
        budget = spin.window  # spinning left since the last message or new transfer
        idle_since = None
        expects = self._expects
        while True:
            try:
                got = self._poll(st)
                now = time.monotonic()
                if now >= self._next_check or self.peers.check_now:
                    self._check_peers(now)
            except Exception:  # never let the progress thread die silently
                _log.exception("depengine: the MPI progress thread failed")
                got = 0
            if self._stop and not self._busy():
                return
            if got:  # let the worker that the progress woke take the GIL before polling again
                idle_since, budget = None, spin.window
                if not spin.usable:
                    time.sleep(0)
                continue
            if expects != self._expects:  # a receive registered while the thread waited in C
                expects, idle_since, budget = self._expects, None, spin.window
            if spin.usable and budget > _MIN_SLEEP and not self._stop:
                why, spun = self._spin(spin, budget)
                if why == 2:
                    idle_since, budget = None, spin.window
                else:
                    budget -= spun
                if why != 4 or budget > _MIN_SLEEP:  # (4 with budget left: a slice of it ended)
                    continue
            t = clock()
            if idle_since is None:
                idle_since = t
            # sleep an eighth of the time waited so far: latency stays within an eighth of the wait
            delay = min(_BUSY_CAP if self._busy() else _IDLE_CAP, (t - idle_since) / 8)
            if delay < _MIN_SLEEP:
                continue
            with self._cv:
                if not self._kicked:
                    self._cv.wait(delay)
                if self._kicked:
                    self._kicked = False
                    idle_since, budget = None, spin.window

    def _spin(self, spin, budget: float) -> tuple[int, float]:
        """Wait in C (spin.py) at most _WAIT_SLICE, spinning at most ``budget`` seconds of it (a short
        slice while Python has requests to test or a sync to watch).  (2, 0) if kicked first."""
        with self._cv:
            if self._kicked:
                self._kicked = False
                return 2, 0.0
            spin.kick[0] = 0
        if self._active or self._waiting_ctl():
            budget = min(budget, _SPIN_SLICE)
        self._waiting = True
        try:
            how = spin.wait(budget, _WAIT_SLICE)
        finally:
            self._waiting = False
        if how[0] < 0:
            _log.error("depengine: MPI_Iprobe failed (error %d): the progress thread only polls now", -how[0])
            spin.disable()
        return how

    def _busy(self) -> bool:
        return bool(self._active or self._expected or self._waiting_ctl() or
                    (self.lane is not None and self._lane_busy()))

    def _poll(self, st) -> int:
        n = self._match(st)
        now = time.perf_counter()
        if now >= self._ctl_due or self._waiting_ctl():  # control messages are rare: look every 2 ms
            self._ctl_due = now + 2e-3
            n += self._poll_ctl(st)
        if self._active:
            n += self._test_active()
        if self.lane is not None:
            n += self._lane_poll()
        return n

    def poll_after_op(self) -> None:
        """Called by a worker after each op it ran: take the messages that arrived meanwhile
        (no thread hand-over on a busy rank), and complete sends that finished."""
        if self._expected and self.spinner.has_message():
            self._match(self._st)
        if self._active:
            self._test_active()
        if self.lane is not None:
            self._lane_poll()
            with self._lock:  # (under the lock where transfers are added, and the flag set)
                if not self._expected and not self._active:
                    self.watch[0] = 0  # nothing for Python to watch: the core's look stays in C

    def _match(self, st) -> int:
        """Match every data message that arrived; handle those of registered transfers."""
        MPI = self.MPI
        n = 0
        ready = []
        with self._lock:
            while True:
                msg = self.data.Improbe(MPI.ANY_SOURCE, MPI.ANY_TAG, st)
                if msg is None:
                    break
                n += 1
                key = (st.Get_source(), st.Get_tag())
                self.peers.heard(key[0])
                item = (msg, st.Get_count(MPI.BYTE))
                inc = self._expected.get(key)
                if inc is None and self.lane is not None:
                    inc = self._lane_claim(key)
                if inc is not None:
                    inc.queue.append(item)
                    if not inc.busy:
                        inc.busy = True
                        ready.append(inc)
                elif key in self._dead_keys:
                    left = self._dead_keys.pop(key) - 1
                    if left:
                        self._dead_keys[key] = left
                    self._discard(msg)
                else:
                    self._arrived.setdefault(key, []).append(item)
        for inc in ready:
            self._work(inc)
        return n

    def _test_active(self) -> int:
        """Complete the requests in flight that finished.  One thread at a time tests them (MPI
        forbids testing a request from two threads); a worker finding it busy leaves it be."""
        if not self._testing.acquire(False):
            return 0
        MPI = self.MPI
        try:
            with self._lock:
                items = list(self._active)
            finished = []
            for p in items:
                try:
                    if MPI.Request.Testall(p.reqs):
                        finished.append((p, None))
                except MPI.Exception as exc:
                    err = RankFailedError(f"a transfer with rank {p.peer} failed in MPI: {exc}")
                    finished.append((p, err))
            finished = self._claim(finished)
        finally:
            self._testing.release()
        for p, err in finished:
            p.callback(err)
        return len(finished)

    def _claim(self, done: list) -> list:
        """The ``(pending, error)`` pairs whose pending is still in flight, taken out of it: each
        completes once, whichever thread found it finished (or failed) first."""
        with self._lock:
            live = {id(p) for p in self._active}
            done = [(p, err) for p, err in done if id(p) in live]
            gone = {id(p) for p, _ in done}
            if gone:
                self._active = [p for p in self._active if id(p) not in gone]
        return done

    # ------------------------------------------------------------ failed peers
    def _peer_gone(self, peer: int, error_of) -> None:
        """Fail every transfer that waits on ``peer``: ``error_of(incoming or pending)`` says why."""
        with self._lock:
            incs = [inc for inc in self._expected.values() if inc.src == peer]
            pend = [p for p in self._active if p.peer == peer]
        for inc in incs:
            err = error_of(inc)
            if err is not None:
                self._finish(inc, err)
        if self.lane is not None:
            with self._lock:  # (where lane_recv registers: a receive is taken here or refused there)
                taken = self.lane.take(peer)
            self._lane_gone(taken, error_of)
        failed = [(p, error_of(p)) for p in pend]
        for p, err in self._claim([(p, err) for p, err in failed if err is not None]):
            p.callback(err)

    def _waiting_on(self) -> set[int]:
        with self._lock:
            peers = {inc.src for inc in self._expected.values()}
            peers.update(p.peer for p in self._active)
        peers.update(self._ctl_waiting_on())
        if self.lane is not None:
            peers.update(self.lane.sources())
        return peers

    # -------------------------------------------------------------------- close
    def close(self, free: bool) -> None:
        """Stop the progress thread once nothing is pending; free the communicators if ``free``."""
        self._lane_close()
        self._stop = True
        self.kick()
        self._thread.join(30)
        if self._thread.is_alive():
            _log.error("depengine: the MPI progress thread did not stop within 30 s")
            return
        if free:
            for c in (self.data, self.ctl, self.fast):
                try:
                    c.Free()
                except self.MPI.Exception:
                    pass
