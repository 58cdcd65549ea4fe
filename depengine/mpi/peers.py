"""Whether the other ranks are alive: process checks on this host, pings everywhere.

Every rank learns at start-up where the others run (host name, process id,
and the process's start time, so that a reused pid is not taken for the
rank).  While this rank waits on a peer, the progress thread checks it every
``HEARTBEAT`` seconds: a peer on this host is dead when its process is gone
or a zombie; any peer is pinged when quiet (its progress thread answers,
busy or not) and has failed when nothing came from it for ``timeout``
seconds (``DEPENGINE_MPI_TIMEOUT``, default 30; ``inf``: never): it died on
another host, or hangs (stopped, or its progress thread cannot run).

MPICH's launcher kills every rank as soon as one dies; with
``mpiexec -disable-auto-cleanup`` it first sends the survivors SIGUSR1, which
the engine catches (when the program has no handler of its own) to check its
peers at once, and kills them shortly after.  The checks here are what ends
the wait where the launcher leaves the survivors running.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

__all__ = ["Peers", "process_identity"]

HEARTBEAT = 0.5


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces
    return [raw[:raw.find(" ")], "comm", *raw[raw.rfind(")") + 2:].split()]


def process_identity() -> dict:
    """Where this process runs: host, pid and the kernel's start time of the process."""
    fields = _stat_fields(os.getpid())
    start = fields[21] if fields and len(fields) > 21 else ""
    return {"host": os.uname().nodename, "pid": os.getpid(), "start": start}


def _alive(pid: int, start: str) -> bool:
    fields = _stat_fields(pid)
    if fields is None:
        if os.path.isdir("/proc/self"):
            return False  # /proc works here and the process is gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = fields[2] if len(fields) > 2 else "?"
    if state in ("Z", "X", "x"):
        return False
    return not start or len(fields) <= 21 or fields[21] == start


class Peers:
    """Liveness bookkeeping of the other ranks (used by the progress thread only)."""

    def __init__(self, rank: int, identities: list[dict], timeout: float | None = None) -> None:
        self.rank = rank
        self.identities = identities
        me = identities[rank]["host"]
        self.same_host = [ident["host"] == me for ident in identities]
        if timeout is None:
            env = os.environ.get("DEPENGINE_MPI_TIMEOUT")
            try:
                timeout = float(env) if env else 30.0
            except ValueError:
                timeout = -1.0
            if not timeout > 0:
                raise ValueError(f"DEPENGINE_MPI_TIMEOUT={env!r} must be a number of seconds > 0 (or inf)")
        self.timeout = timeout
        now = time.monotonic()
        self.last_heard = [now] * len(identities)
        self.pinged = [0.0] * len(identities)
        self.dead: dict[int, str] = {}
        self.check_now = False  # set by the SIGUSR1 handler

    def heard(self, peer: int) -> None:
        self.last_heard[peer] = time.monotonic()

    def check(self, waiting_on, now: float, ping) -> list[tuple[int, str]]:
        """Peers of ``waiting_on`` found dead now, with the reason; ``ping(peer)`` sends a ping."""
        found = []
        for peer in waiting_on:
            if peer in self.dead or peer == self.rank:
                continue
            ident = self.identities[peer]
            if self.same_host[peer] and not _alive(ident["pid"], ident["start"]):
                found.append((peer, f"rank {peer} died (process {ident['pid']} on host {ident['host']} "
                                    "is gone)"))
                continue
            quiet = now - self.last_heard[peer]
            if quiet > self.timeout:
                found.append((peer, f"rank {peer} (process {ident['pid']} on host {ident['host']}) answered "
                                    f"nothing for {quiet:.1f} s (DEPENGINE_MPI_TIMEOUT={self.timeout:g}): "
                                    "it died or hangs"))
            elif quiet > HEARTBEAT and now - self.pinged[peer] > HEARTBEAT:
                self.pinged[peer] = now
                ping(peer)
        for peer, reason in found:
            self.dead[peer] = reason
        return found


def encode_identity() -> bytes:
    return json.dumps(process_identity()).encode("utf-8")


def install_sigusr1(peers_list: list) -> None:
    """Make hydra's SIGUSR1 (a rank died) trigger a liveness check instead of killing this process.

    Installed only from the main thread and only where SIGUSR1 still has its
    default action, so a program's own handler is never replaced.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL:
            return
    except (AttributeError, ValueError):
        return

    def on_sigusr1(signum, frame) -> None:
        for peers in list(peers_list):
            peers.check_now = True

    signal.signal(signal.SIGUSR1, on_sigusr1)
