"""Control messages between ranks: syncs, goodbyes, pings, gathers.

A mixin of :class:`~depengine.mpi.transport.Transport`, on a communicator of
its own.  Control messages are small JSON objects (never pickles), matched by
the progress thread.

- **sync** (``wait_all``, ``fetch``, ``gather_trace``): every rank sends what
  it reached (the call, the number of pushes, the running hash of its op
  sequence, and the first and last push since the previous sync) to rank 0,
  which compares them and sends each rank the verdict.  Ranks that pushed
  different op sequences all get the same :class:`ProgramMismatchError`.
- **bye** (``close``): a rank tells every other how many transfers it pushed
  to it and how many it will receive from it; a transfer beyond those counts
  can never complete, so it fails at once instead of hanging.
- **ping/pong**: liveness of peers on other hosts (see peers.py).
"""

from __future__ import annotations

import json
import threading
import time

from .errors import ProgramMismatchError, RankFailedError
from .peers import HEARTBEAT, Peers

__all__ = ["Control"]

TAG_CTL, TAG_GATHER = 1, 2
_MAX_CTL = 64 * 1024
_MAX_GATHER = 1 << 30


class _Sync:
    __slots__ = ("abandoned", "error", "event", "k", "records")

    def __init__(self, k: int) -> None:
        self.k = k
        self.abandoned = False  # rank 0's caller timed out; the sync is still answered
        self.event = threading.Event()
        self.error: BaseException | None = None
        self.records: dict[int, dict] = {}  # on rank 0: what each rank reached


def _describe(rank: int, rec: dict) -> str:
    return (f"rank {rank} reached {rec['what']} after {rec['count']} pushes "
            f"(hash {rec['hash'] & 0xFFFFFFFF:08x}; first push since the last check: {rec['first']}; "
            f"last: {rec['last']})")


class Control:
    """Syncs, goodbyes and liveness; needs the Transport's lock, MPI and ``_peer_gone``."""

    def __init__(self, comm, identities: list[dict]) -> None:
        self.ctl = comm.Dup()
        self.peers = Peers(self.rank, identities)
        self._next_check = time.monotonic() + HEARTBEAT
        self._syncs: dict[int, _Sync] = {}
        self._early: dict[int, dict[int, dict]] = {}  # rank 0: records of syncs not begun here yet
        self._sync_seq = 0
        self._byes: dict[int, dict] = {}
        self._want_byes = False
        self._byes_event = threading.Event()
        self._gathering: set[int] = set()
        self._root_clock = (0, 0)  # (rank 0's perf counter, this rank's) at the last verdict

    # ------------------------------------------------------------- messages
    def _send_ctl(self, dst: int, obj: dict) -> None:
        from .transport import _Pending

        MPI = self.MPI
        data = json.dumps(obj).encode("utf-8")
        try:
            req = self.ctl.Isend([data, MPI.BYTE], dst, TAG_CTL)
            if not req.Test():
                self._watch(_Pending([req], lambda err: None, dst, -2, data))
        except MPI.Exception:
            pass  # a dead peer: liveness checks report it

    def _poll_ctl(self, st) -> int:
        MPI = self.MPI
        got = []
        while True:
            msg = self.ctl.Improbe(MPI.ANY_SOURCE, TAG_CTL, st)
            if msg is None:
                break
            src, count = st.Get_source(), st.Get_count(MPI.BYTE)
            if count > _MAX_CTL:
                self._discard(msg)
                continue
            buf = bytearray(count)
            msg.Recv([buf, MPI.BYTE])
            got.append((src, buf))
        for src, buf in got:
            self.peers.heard(src)
            try:
                obj = json.loads(buf.decode("utf-8"))
                handler = getattr(self, f"_on_{obj['t']}", None) if isinstance(obj, dict) else None
                if handler is None or obj["t"] not in ("sync", "verdict", "bye", "ping", "pong"):
                    raise ValueError("unknown message")
                handler(src, obj)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                from .transport import _log

                _log.error("depengine: rank %d ignored a malformed control message from rank %d",
                           self.rank, src)
        return len(got)

    def _on_ping(self, src: int, obj: dict) -> None:
        self._send_ctl(src, {"t": "pong"})

    def _on_pong(self, src: int, obj: dict) -> None:
        pass  # heard() already noted it

    # ----------------------------------------------------------------- syncs
    def sync(self, record: dict, timeout: float | None) -> None:
        """Check with every rank that all reached the same point; raise the verdict's error."""
        with self._lock:
            k = self._sync_seq
            self._sync_seq = k + 1
            s = self._syncs[k] = _Sync(k)
        if self.rank == 0:
            self._contribute(k, 0, record)
        else:
            self._send_ctl(0, {"t": "sync", "k": k, "rec": record})
        self.kick()
        if not s.event.wait(timeout):
            with self._lock:  # rank 0 still collects the others' records and answers them
                if self.rank != 0 or s.event.is_set():
                    self._syncs.pop(k, None)
                else:
                    s.abandoned = True
            raise TimeoutError(f"{record['what']}: the other ranks did not reach it within {timeout}s")
        with self._lock:
            self._syncs.pop(k, None)
        if s.error is not None:
            raise s.error

    def _on_sync(self, src: int, obj: dict) -> None:
        k, rec = obj["k"], obj["rec"]
        if self.rank != 0 or k.__class__ is not int or not isinstance(rec, dict) or not (
                isinstance(rec.get("what"), str) and rec.get("count").__class__ is int
                and rec.get("hash").__class__ is int):
            raise ValueError("bad sync")
        self._contribute(k, src, rec)

    def _contribute(self, k: int, src: int, rec: dict) -> None:
        with self._lock:
            s = self._syncs.get(k)
            if s is None:  # rank 0 has not reached this sync yet
                self._early.setdefault(k, {})[src] = rec
                return
            s.records.update(self._early.pop(k, {}))
            s.records[src] = rec
            if len(s.records) < self.size or s.event.is_set():
                return
            records = dict(s.records)
        keys = {(r["what"], r["count"], r["hash"]) for r in records.values()}
        error = None
        if len(keys) > 1:
            base = (records[0]["what"], records[0]["count"], records[0]["hash"])
            differ = [r for r in range(1, self.size)
                      if (records[r]["what"], records[r]["count"], records[r]["hash"]) != base]
            error = ("the ranks pushed different op sequences: "
                     + "; ".join(_describe(r, records[r]) for r in [0, *differ[:7]])
                     + (f"; and {len(differ) - 7} more rank(s) differ" if len(differ) > 7 else ""))
        for r in range(1, self.size):
            self._send_ctl(r, {"t": "verdict", "k": k, "error": error, "kind": "mismatch",
                               "ns": time.perf_counter_ns()})
        self._verdict(k, None if error is None else ProgramMismatchError(error))

    def _on_verdict(self, src: int, obj: dict) -> None:
        error, kind = obj["error"], obj["kind"]
        if src != 0 or not (error is None or isinstance(error, str)) or kind not in ("mismatch", "failed"):
            raise ValueError("bad verdict")
        cls = ProgramMismatchError if kind == "mismatch" else RankFailedError
        if obj.get("ns").__class__ is int:  # rank 0's clock when it sent this
            self._root_clock = (obj["ns"], time.perf_counter_ns())
        self._verdict(obj["k"], None if error is None else cls(error))

    def _verdict(self, k: int, error: BaseException | None) -> None:
        with self._lock:
            s = self._syncs.get(k)
            if s is None or s.event.is_set():
                return  # a sync this rank gave up on (timeout), or one already decided
            s.error = error
            if s.abandoned:
                del self._syncs[k]
        s.event.set()

    # ------------------------------------------------------------------- bye
    def bye(self, counts: dict, sent: list[int], recvd: list[int]) -> None:
        """Tell every rank that this one pushes nothing more (``counts``: count, hash, last)."""
        self._want_byes = True
        for r in range(self.size):
            if r != self.rank:
                self._send_ctl(r, {"t": "bye", **counts, "sent": sent[r], "recvd": recvd[r]})
        if self.rank == 0:  # syncs other ranks began that rank 0 will never reach
            with self._lock:
                early, self._early = self._early, {}
            for k, records in early.items():
                for r, rec in records.items():
                    self._send_ctl(r, {"t": "verdict", "k": k, "kind": "mismatch", "error": (
                        f"the ranks pushed different op sequences: rank {r} reached {rec['what']} after "
                        f"{rec['count']} pushes but rank 0 closed its engine after {counts['count']} "
                        f"(last push: {counts['last']})")})
        self._check_byes()
        self.kick()

    def _on_bye(self, src: int, obj: dict) -> None:
        if not all(obj.get(f).__class__ is int for f in ("count", "hash", "sent", "recvd")):
            raise ValueError("bad bye")
        obj["last"] = str(obj.get("last"))
        self._byes[src] = obj
        try:
            self._peer_gone(src, lambda item: self._beyond_bye(item, src, obj))
        finally:
            self._check_byes()  # (whatever _peer_gone raised, the goodbye is counted)
        with self._lock:
            syncs = list(self._syncs.values())
        for s in syncs:  # a sync that rank src will never join
            if (self.rank == 0 and src not in s.records) or src == 0:
                what = s.records[0]["what"] if 0 in s.records else "a collective call"
                error = (f"the ranks pushed different op sequences: rank {src} closed its engine after "
                         f"{obj['count']} pushes (last: {obj['last']}) where rank {self.rank} reached {what}")
                if self.rank == 0:
                    for r in range(1, self.size):
                        if r != src:
                            self._send_ctl(r, {"t": "verdict", "k": s.k, "kind": "mismatch", "error": error})
                self._verdict(s.k, ProgramMismatchError(error))
        self._check_byes()

    def _send_refused(self, dst: int, seq: int) -> BaseException | None:
        if dst in self.peers.dead:
            return RankFailedError(f"transfer #{seq} to rank {dst} cannot be sent: {self.peers.dead[dst]}")
        bye = self._byes.get(dst)
        if bye is not None and seq >= bye["recvd"]:
            return self._never_received(dst, seq, bye)
        return None

    def _expect_refused(self, inc) -> BaseException | None:
        if inc.src in self.peers.dead:
            return RankFailedError(f"var {inc.name!r} v{inc.gen} never reached rank {self.rank}: "
                                   f"{self.peers.dead[inc.src]}")
        bye = self._byes.get(inc.src)
        if bye is not None and inc.seq >= bye["sent"]:
            return self._never_sent(inc, bye)
        return None

    def _never_sent(self, inc, bye: dict) -> ProgramMismatchError:
        return ProgramMismatchError(
            f"var {inc.name!r} v{inc.gen} never reached rank {self.rank}: rank {inc.src} closed its engine "
            f"after sending it {bye['sent']} transfer(s), and this was transfer #{inc.seq} (after "
            f"{bye['count']} pushes there): the ranks pushed different op sequences")

    def _never_received(self, dst: int, seq: int, bye: dict) -> ProgramMismatchError:
        return ProgramMismatchError(
            f"transfer #{seq} from rank {self.rank} will never be received: rank {dst} closed its engine "
            f"after posting {bye['recvd']} receive(s) from it: the ranks pushed different op sequences")

    def _beyond_bye(self, item, src: int, bye: dict) -> BaseException | None:
        from .transport import Incoming

        if isinstance(item, Incoming):
            return self._never_sent(item, bye) if item.seq >= bye["sent"] else None
        if item.seq >= 0 and item.seq >= bye["recvd"]:
            return self._never_received(src, item.seq, bye)
        return None

    def _check_byes(self) -> None:
        if self._want_byes and all(r == self.rank or r in self._byes or r in self.peers.dead
                                   for r in range(self.size)):
            self._byes_event.set()

    def wait_byes(self, timeout: float | None) -> dict[int, dict]:
        """Wait until every other rank said bye or died; returns the byes."""
        self._byes_event.wait(timeout)
        return dict(self._byes)

    # -------------------------------------------------------------- liveness
    def _waiting_ctl(self) -> bool:
        return bool(self._syncs or self._gathering or (self._want_byes and not self._byes_event.is_set()))

    def _ctl_waiting_on(self) -> set[int]:
        peers = set(self._gathering)
        with self._lock:
            syncs = list(self._syncs.values())
        for s in syncs:
            if self.rank == 0:
                peers.update(r for r in range(1, self.size) if r not in s.records)
            else:
                peers.add(0)
        if self._want_byes:
            peers.update(r for r in range(self.size) if r != self.rank and r not in self._byes)
        return peers

    def _check_peers(self, now: float) -> None:
        self.peers.check_now = False
        self._next_check = now + HEARTBEAT
        ping = lambda p: self._send_ctl(p, {"t": "ping"})  # noqa: E731
        for peer, reason in self.peers.check(self._waiting_on(), now, ping):
            self._peer_died(peer, reason)

    def _peer_died(self, peer: int, reason: str) -> None:
        from .transport import Incoming

        def error_of(item):
            if isinstance(item, Incoming):
                return RankFailedError(f"var {item.name!r} v{item.gen} never reached rank {self.rank}: "
                                       f"{reason}")
            return RankFailedError(f"a transfer between rank {self.rank} and rank {peer} failed: {reason}")
        self._peer_gone(peer, error_of)
        with self._lock:
            syncs = list(self._syncs.values())
        for s in syncs:
            if self.rank == 0:
                for r in range(1, self.size):
                    if r != peer and r not in self.peers.dead:
                        self._send_ctl(r, {"t": "verdict", "k": s.k, "error": reason, "kind": "failed"})
            if self.rank == 0 or peer == 0:
                self._verdict(s.k, RankFailedError(reason))
        self._check_byes()

    # ---------------------------------------------------------------- gather
    def clock_offset(self) -> int:
        """This rank's perf counter minus rank 0's, as seen at the last sync (nanoseconds; the
        error is one message's latency)."""
        root, mine = self._root_clock
        return mine - root if root else 0

    def gather(self, payload: bytes, timeout: float | None) -> list[bytes] | None:
        """Rank 0 gets every rank's ``payload`` (its own first); the others get None."""
        MPI = self.MPI
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.rank != 0:
            req = self.ctl.Isend([payload, MPI.BYTE], 0, TAG_GATHER)
            self._gathering = {0}
            try:
                self._poll_until(lambda: req.Test(), deadline, "sending a trace to rank 0")
            finally:
                self._gathering = set()
            return None
        out = [payload]
        st = MPI.Status()
        self._gathering = set(range(1, self.size))
        try:
            for src in range(1, self.size):
                found = []

                def probe(src=src, found=found) -> bool:
                    msg = self.ctl.Improbe(src, TAG_GATHER, st)
                    if msg is not None:
                        found.append((msg, st.Get_count(MPI.BYTE)))
                    return bool(found)
                self._poll_until(probe, deadline, f"waiting for rank {src}'s trace", src)
                msg, count = found[0]
                if count > _MAX_GATHER:
                    self._discard(msg)
                    raise ValueError(f"rank {src} sent a trace of {count} bytes (more than {_MAX_GATHER})")
                buf = bytearray(count)
                msg.Recv([buf, MPI.BYTE])
                out.append(bytes(buf))
                self._gathering.discard(src)
        finally:
            self._gathering = set()
        return out

    def _poll_until(self, ready, deadline, what: str, peer: int = 0) -> None:
        delay = 20e-6
        while not ready():
            if peer in self.peers.dead:
                raise RankFailedError(f"{what}: {self.peers.dead[peer]}")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{what}: timed out")
            time.sleep(delay)
            delay = min(delay * 2, 2e-3)
