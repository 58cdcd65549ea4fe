"""``Engine("mpi")``: the same program on every rank, each op on the owner of what it writes.

Every rank runs the same program and pushes the same ops in the same order
(a sequential task flow, as in StarPU-MPI).  A var has an owner rank and, to
be moved, a NumPy buffer of the same shape and dtype on every rank: the
owner's is authoritative, the others' are replicas that received data lands
in.  An op runs on the owner of its writes (or on ``execute_on``).  Every
rank plans each push the same way from state it keeps identically (each
var's write count and the set of ranks whose copy is current), so no message
is needed to agree on who sends what:

- the executing rank receives each var it names whose current version it
  lacks, from the var's owner (a replica stays valid until the next write:
  one send per version per rank that needs it);
- after the op, a var written away from its owner is sent back to it;
- ranks that neither run the op nor own what it needs only update that state.

Transfers are ops of the rank's own local engine (a send reads the var, a
receive writes it), so the local engine orders them with everything else:
the read-after-write, write-after-read and write-after-write rules are the
local engine's.  Sends and receives are async ops: no worker ever waits on
MPI (see transport.py).  An op at priority 0 whose result another rank reads
is raised to priority 1 while it waits, so it runs before ops no rank waits
for.  A failed var travels as a failure, so dependents are skipped everywhere.

Waits are per rank; ``fetch``, ``wait_all``, ``gather_trace`` and ``close`` are collective and
check that every rank pushed the same op sequence (a running hash of every push and new var).
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import weakref
import zlib

import numpy as np

from .._device import cpu
from .._engine import Engine
from .._errors import EngineClosedError, VarDeletedError
from .._native import refuse_async
from .._op import name_of
from .._var import Var
from ..profiler import active_recorder
from . import transfers
from .errors import MpiUnavailableError, ProgramMismatchError
from .state import MVar, RemoteOp, Sequence, ThenPoll, VarLookup, bad_push, check_buffer, describe, import_mpi
from .wire import dtype_code

__all__ = ["MpiEngine", "RemoteOp"]

_engines: weakref.WeakSet = weakref.WeakSet()
_NEW_VAR, _FETCH = -1, -2  # tags in the running hash (strings hash differently in every process)
_CPU = cpu()
_OP_KINDS = frozenset(("normal", "prioritized", "copy", "async"))


class MpiEngine(Engine, VarLookup):
    """A local engine per rank plus MPI.  Build it with ``de.Engine("mpi", workers=k, comm=None)``.

    ``comm`` is an mpi4py intracommunicator (default ``MPI.COMM_WORLD``);
    ``local`` is the kind of each rank's own engine (``"threaded"`` by default,
    ``"naive"`` or ``"perdevice"``); other options go to it.  Without
    ``mpiexec`` the world has one rank and the engine behaves like its local
    engine.  ``rank`` and ``size`` say where this process stands.
    """

    type = "mpi"

    def __init__(self, type=None, *, workers=None, comm=None, local="threaded", **options) -> None:
        MPI = import_mpi()
        if local not in ("naive", "threaded", "perdevice"):
            raise ValueError(f"local={local!r} must be 'naive', 'threaded' or 'perdevice'")
        if comm is None:
            comm = MPI.COMM_WORLD
        elif not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
            raise TypeError(f"comm={comm!r} must be an mpi4py intracommunicator (such as MPI.COMM_WORLD)")
        if MPI.Query_thread() != MPI.THREAD_MULTIPLE:
            raise MpiUnavailableError("Engine('mpi') needs MPI initialised with MPI_THREAD_MULTIPLE "
                                      "(mpi4py's default: leave mpi4py.rc.thread_level at 'multiple')")
        self._closing = self._closed = False
        self._broken: BaseException | None = None
        self._capturing = 0
        self._local = Engine(local, workers=workers, **options)
        self.options = self._local.options
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._lock = threading.Lock()  # one push (or new_var, fetch) at a time: the order is the program
        self._vars: dict[Var, MVar] = {}
        self._serials = 0
        # the op sequence: pushes (and new_var calls) so far, the same on every rank; their running
        # hash; (what, rank or None, count) of the first and last push since the last check
        self._seq = Sequence()
        self._codes: dict[str, int] = {}  # op name -> its crc32, for the hash
        self._sent = [0] * self.size   # transfers pushed to each rank
        self._recvd = [0] * self.size  # transfers pushed from each rank
        self._bytes = [0, 0]           # bytes of the transfers pushed: sent, received
        self._log = None               # op id -> (push, stage, name, transfer) of the last profile
        self._log_of = None            # the profile's recorder
        self._log_now = None           # _log while that profile records
        self._transport = None
        self._push_word = np.zeros(1, np.int64)
        if self.size > 1:
            from .peers import encode_identity, install_sigusr1
            from .transport import Transport

            install_sigusr1(_peers)  # before any collective call: a rank may die during them
            identities = transfers.allgather_json(MPI, comm, encode_identity())
            self._transport = Transport(MPI, comm, self.rank, self.size, identities,  # naive: no spin
                                        None if local == "naive" else getattr(self._local, "_core", None),
                                        local == "threaded")
            _peers.append(self._transport.peers)
            self._push_word = self._transport.spinner.pushes
            core = getattr(self._local, "_core", None)
            if core is not None:  # the common case of push in C (depengine/_core_mpi_push.c)
                C = sys.modules[core.__class__.__module__]
                slow = MpiEngine.push.__get__(self)  # what the C path hands everything else to
                then_poll = None if self._transport.after_op_in_c else ThenPoll
                self._seq = C.MpiPusher(self, self._vars, self._codes, self._lock, self._local.push, RemoteOp,
                                        then_poll, self._transport.poll_after_op, slow, name_of,
                                        active_recorder, C.Native, self._push_word, self.rank, self.size)
                self.push = self._seq.push
        _engines.add(self)

    # ------------------------------------------------------------------ vars
    def new_var(self, name: str | None = None, owner: int = 0, buffer: np.ndarray | None = None, *,
                uninitialized: bool = False) -> Var:
        """A var owned by rank ``owner`` whose data lives in ``buffer`` on every rank.

        ``buffer`` is a contiguous, writeable NumPy array of the same shape and
        dtype on every rank (None: a var that only orders ops, never moved).
        ``uninitialized=True`` says the buffer holds nothing yet (``np.empty``):
        the first op to write it runs without receiving its contents.
        Collective: every rank creates the same vars in the same order.
        """
        self._check_open("new_var")
        if name is not None and name.__class__ is not str:
            raise TypeError(f"var name={name!r} must be a str or None")
        if owner.__class__ is not int or not 0 <= owner < self.size:
            raise ValueError(f"new_var({name!r}): owner={owner!r} must be a rank in [0, {self.size})")
        if buffer is not None:
            check_buffer(buffer, name)
        if uninitialized.__class__ is not bool:
            raise TypeError(f"new_var({name!r}): uninitialized={uninitialized!r} must be a bool")
        with self._lock:
            serial = self._serials
            var = self._local.new_var(f"v{serial}" if name is None else name)
            self._serials = serial + 1
            everywhere = (1 << self.size) - 1 if uninitialized else 0
            mv = self._vars[var] = MVar(var, serial, owner, buffer, everywhere)
            shape = (-1,) if buffer is None else buffer.shape
            code = 0 if buffer is None else zlib.crc32(dtype_code(buffer.dtype) + mv.order.encode())
            self._note((_NEW_VAR, serial, owner, shape, code, everywhere), f"new_var({var.name!r})")
        return var

    def owner_of(self, var: Var) -> int:
        """The rank that owns ``var``."""
        return self._mvar(var, "owner_of").owner

    def traffic(self) -> dict[str, int]:
        """What this rank has pushed so far: ops, transfers sent and received, and their bytes."""
        with self._lock:
            return {"pushes": self._seq.count, "sends": sum(self._sent), "receives": sum(self._recvd),
                    "bytes_sent": self._bytes[0], "bytes_received": self._bytes[1]}

    def delete_var(self, var: Var, on_delete=None) -> None:
        """Release this rank's copy of ``var`` once its pending ops are done (a local call:
        a var is deleted when the program drops it, which each rank sees at its own time)."""
        mv = self._mvar(var, "delete_var")
        self._local.delete_var(var, on_delete)
        with self._lock:
            self._vars.pop(mv.var, None)

    # ------------------------------------------------------------------- push
    def push(self, fn, reads=(), writes=(), name=None, priority=0, always_run=False, device=None,
             kind="normal", pure=False, execute_on=None, _async=False):
        """Push ``fn(ctx)`` on every rank; it runs on the owner of ``writes`` (or ``execute_on``).

        Returns the local :class:`~depengine.Op` on the rank that runs it and
        a :class:`RemoteOp` elsewhere.  Bad input raises the same error on
        every rank before anything is pushed.
        """
        if self._closing or self._broken is not None:
            self._check_open("push")
        if (priority.__class__ is not int or (name is not None and name.__class__ is not str)
                or (device is not None and device != _CPU) or kind not in _OP_KINDS or not callable(fn)):
            bad_push(fn, priority, name, device, kind)
        if name is None:
            name = name_of(fn)
        ws, rs = self._mvars_of(writes, reads)
        if execute_on is not None:
            if execute_on.__class__ is not int or not 0 <= execute_on < self.size:
                raise ValueError(f"op {name!r}: execute_on={execute_on!r} must be a rank in [0, {self.size})")
            x = execute_on
        elif len(ws) == 1:
            x = ws[0].owner
        else:
            x = self._owner_of_writes(name, ws)
        if self.size > 1:
            for vs in (rs, ws):
                for mv in vs:
                    if mv.buffer is None and mv.owner != x:
                        raise ValueError(f"op {name!r} runs on rank {x} but var {mv.name!r} (owned by rank "
                                         f"{mv.owner}) has no buffer to move there: pass buffer= to new_var, "
                                         "or run the op on its owner with execute_on=")
        code = self._codes.get(name)
        if code is None:
            if len(self._codes) > 4096:
                self._codes.clear()
            code = self._codes[name] = zlib.crc32(name.encode("utf-8", "surrogatepass"))
        lock = self._lock
        lock.acquire()
        try:
            # ints and tuples of ints hash alike in every process (strings do not)
            key = (code, x, len(rs), *[mv.serial for mv in rs], *[mv.serial for mv in ws])
            count = _advance(self._seq, key, name, x)
            self._push_word[0] = count  # the progress thread does not spin while this moves (spin.py)
            if self.size == 1:
                return self._run_here(fn, rs, ws, name, priority, always_run, kind, pure, _async, count)
            return self._plan(fn, rs, ws, name, priority, always_run, kind, pure, x, _async, count)
        finally:
            lock.release()

    def push_async(self, fn, reads=(), writes=(), name=None, priority=0, always_run=False, device=None,
                   kind="async", execute_on=None):
        """Push ``fn(ctx, done)`` like :meth:`push`; it completes when ``done(error=None)`` is called."""
        refuse_async(fn)
        return self.push(fn, reads, writes, name, priority, always_run, device, kind, False, execute_on, True)

    def _owner_of_writes(self, name: str, ws: list[MVar]) -> int:
        if not ws:
            raise ValueError(f"op {name!r} writes no var, so no owner says where it runs: "
                             "pass execute_on=rank")
        owners = sorted({mv.owner for mv in ws})
        if len(owners) > 1:
            raise ValueError(f"op {name!r} writes vars owned by ranks {owners}: pass execute_on=rank")
        return owners[0]

    def _plan(self, fn, rs, ws, name, priority, always_run, kind, pure, x, is_async, count):
        """Push this rank's part of one op (lock held): receives, the op, sends, write-backs."""
        me = self.rank
        bit = 1 << x
        moves = backs = None
        part = me == x
        for mv in (*rs, *ws):
            if not mv.holders & bit:  # the executing rank lacks the current version: its owner sends it
                if moves is None:
                    moves = []
                moves.append((mv, mv.gen))
                mv.holders |= bit
                part = part or me == mv.owner
        for mv in ws:
            mv.gen += 1
            mv.writer = name
            if mv.owner == x:
                mv.holders = bit
            else:  # written away from its owner: sent back to it
                mv.holders = bit | (1 << mv.owner)
                if backs is None:
                    backs = []
                backs.append(mv)
                part = part or me == mv.owner
        if not part:
            return RemoteOp(name, x)  # this rank has no part in it
        rec = active_recorder()
        if rec is not None and rec is not self._log_of:
            self._log, self._log_of = {}, rec
        log = self._log_now = self._log if rec is not None else None
        if moves is not None:
            for mv, gen in moves:
                if me == mv.owner:
                    self._send(mv, x, gen, 0)
            if me == x:
                for mv, gen in moves:
                    self._recv(mv, mv.owner, gen, 1)
        op = RemoteOp(name, x)
        if me == x:
            op = self._run_here(fn, rs, ws, name, priority, always_run, kind, pure, is_async, count)
            if log is not None:
                log[op.id] = (count, 2, name, None)
        for mv in ws:  # (after the sends of the moves: they raise the writer of the version they send)
            mv.last = op if me == x else None
        if backs is not None:
            for mv in backs:
                if me == x:
                    self._send(mv, mv.owner, mv.gen, 3)
                elif me == mv.owner:
                    self._recv(mv, x, mv.gen, 4)
        return op

    def _run_here(self, fn, rs, ws, name, priority, always_run, kind, pure, is_async, count):
        reads = [mv.var for mv in rs]
        writes = [mv.var for mv in ws]
        if is_async:
            return self._local.push(fn, reads, writes, name, priority, always_run, None, kind, pure, True)
        transport = self._transport
        if transport is not None and not transport.after_op_in_c:
            fn = ThenPoll(fn, transport.poll_after_op)  # (with the lane the core looks at MPI itself)
        return self._local.push(fn, reads, writes, name, priority, always_run, None, kind, pure)

    def _send(self, mv: MVar, dst: int, gen: int, stage: int) -> None:
        last = mv.last
        if last is not None:  # another rank waits for what it writes: run it before ops no one waits for
            mv.last = None
            if last.priority == 0 and last._state == 0:
                last.priority = 1
        seq = self._sent[dst]
        self._sent[dst] = seq + 1
        self._bytes[0] += mv.raw.nbytes
        op = transfers.push_send(self, mv, dst, seq, gen)
        if self._log_now is not None:
            self._log_now[op.id] = (self._seq.count, stage, op.name,
                                    ("send", self.rank, dst, mv.serial, mv.name, gen, mv.raw.nbytes))

    def _recv(self, mv: MVar, src: int, gen: int, stage: int) -> None:
        seq = self._recvd[src]
        self._recvd[src] = seq + 1
        self._bytes[1] += mv.raw.nbytes
        op = transfers.push_recv(self, mv, src, seq, gen)
        if self._log_now is not None:
            self._log_now[op.id] = (self._seq.count, stage, op.name,
                                    ("recv", src, self.rank, mv.serial, mv.name, gen, mv.raw.nbytes))

    # ---------------------------------------------------------------- waiting
    def wait_for_var(self, var: Var, timeout: float | None = None) -> None:
        """Return once this rank's pending writes to ``var`` (its own ops' and received versions)
        are done; raises the failure of this rank's copy.  Not collective: see :meth:`fetch`."""
        self._local.wait_for_var(self._mvar(var, "wait_for_var").var, timeout)

    def wait_all(self, timeout: float | None = None) -> None:
        """Collective: check that all ranks pushed the same ops, then wait for this rank's ops.

        Raises :class:`ProgramMismatchError` on every rank when the op
        sequences differ, else this rank's oldest unreported failure.
        """
        deadline = transfers.deadline(timeout)
        self._sync("wait_all()", timeout)
        self._local.wait_all(transfers.left(deadline))

    def fetch(self, var: Var, timeout: float | None = None) -> np.ndarray:
        """Collective: the latest value of ``var`` on every rank (a copy), or its failure raised."""
        mv = self._mvar(var, "fetch")
        if mv.buffer is None:
            raise ValueError(f"fetch({mv.name!r}): the var has no buffer")
        deadline = transfers.deadline(timeout)
        self._sync(f"fetch({mv.name!r})", timeout)
        with self._lock:
            self._note((_FETCH, mv.serial), f"fetch({mv.name!r})")
            rec = active_recorder()
            if rec is not None and rec is not self._log_of:
                self._log, self._log_of = {}, rec
            self._log_now = self._log if rec is not None else None
            for r in range(self.size):
                if not mv.holders & (1 << r):
                    mv.holders |= 1 << r
                    if self.rank == mv.owner:
                        self._send(mv, r, mv.gen, 0)
                    elif self.rank == r:
                        self._recv(mv, mv.owner, mv.gen, 1)
        self._local.wait_for_var(mv.var, transfers.left(deadline))
        return np.array(mv.buffer, copy=True)

    def _sync(self, what: str, timeout: float | None) -> None:
        self._check_open(what)
        if self._transport is None:
            return
        with self._lock:
            seq = self._seq
            record = {"what": what, "count": seq.count, "hash": seq.hash, "first": describe(seq.first),
                      "last": describe(seq.last)}
        try:
            self._transport.sync(record, timeout)
        except ProgramMismatchError as exc:
            self._broken = exc
            raise
        with self._lock:
            self._seq.since_sync = 0
            self._seq.first = None

    # ------------------------------------------------------------------ traces
    def gather_trace(self, prof, timeout: float | None = None):
        """Collective: rank 0 gets one :class:`~depengine.Trace` of every rank's part of ``prof``
        (one process per rank, transfers as dependencies); the other ranks get None."""
        from .traces import gather_trace

        self._sync("gather_trace()", timeout)
        return gather_trace(self, prof, timeout)

    # ---------------------------------------------------------------- closing
    def close(self) -> None:
        """Collective: finish this rank's ops, tell the other ranks, wait for theirs, stop."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        transfers.close(self)
        self._closed = True
        _engines.discard(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def record(self, execute: bool = True):
        raise NotImplementedError("record() is not supported by Engine('mpi') yet: push the ops")

    def bulk(self, size: int = 64):
        """Group this thread's small local CPU ops (see Engine.bulk); transfers are never bulked."""
        return self._local.bulk(size)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "closing" if self._closing else "open"
        return (f"<MpiEngine rank={self.rank} size={self.size} local={self._local.type!r} "
                f"workers={self.options.workers} vars={len(self._vars)} pushes={self._seq.count} {state}>")

    # ---------------------------------------------------------------- helpers
    def _check_open(self, what: str) -> None:
        if self._closing:
            raise EngineClosedError(f"{what} on a closed engine")
        if self._broken is not None:
            raise ProgramMismatchError(f"{what}: the engine stopped after the ranks' op sequences "
                                       f"diverged ({self._broken})")

    def _mvar(self, var, role: str) -> MVar:
        mv = self._vars.get(var)
        if mv is not None:
            return mv
        if not isinstance(var, Var):
            raise TypeError(f"{role}: {var!r} is not a Var (create vars with Engine.new_var)")
        if var.deleted:
            raise VarDeletedError(f"{role}: var {var.name!r} was deleted")
        raise ValueError(f"{role}: var {var.name!r} belongs to another engine")

    def _note(self, item: tuple, what: str) -> None:
        """Add a new_var or fetch to the running hash of this rank's op sequence (lock held)."""
        _advance(self._seq, (item,), what, None)


def _advance(seq, key: tuple, what: str, rank: int | None) -> int:
    """One more push (or new_var, fetch) in the op sequence ``seq`` (the engine's lock held): its running
    hash takes ``key`` (as _core_mpi_push.c's does); returns the new count."""
    seq.hash = hash((seq.hash, *key))
    count = seq.count = seq.count + 1
    seq.last = (what, rank, count)
    if not seq.since_sync:
        seq.first = seq.last
    seq.since_sync += 1
    return count


_peers: list = []  # liveness bookkeeping of every engine, for the SIGUSR1 handler


def _close_at_exit() -> None:
    """Engines still open at exit close here, before mpi4py finalizes MPI (after atexit handlers)."""
    for eng in list(_engines):
        try:
            eng.close()
        except Exception:
            logging.getLogger("depengine").exception("depengine: closing %r at exit failed", eng)


atexit.register(_close_at_exit)
