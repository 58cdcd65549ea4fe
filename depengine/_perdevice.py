"""The per-device engine: CPU pools, copy workers and GPU streams under one dependency engine.

Pools (each a :class:`scheduler.WorkerPool` with its own priority queue):

- CPU ``normal`` (and ``async``) ops: ``workers`` threads;
- CPU ``prioritized`` ops: ``prioritized_workers`` threads (0: they share the
  normal pool, ranked by priority);
- CPU ``copy`` ops: ``copy_workers`` threads; a copy that reads GPU data gets
  that GPU's device-to-host stream as ``ctx.stream``;
- per GPU, created on first use: ``gpu_streams`` compute streams plus one
  host-to-device stream (``copy`` ops with ``device=gpu(i)``) and one
  device-to-host stream, each fed by one host thread.

GPU semantics (MXNet 2.0's asynchronous GPU engine): a GPU op's function
enqueues work on ``ctx.stream`` and returns; the engine records an event on
that stream and the op counts as complete.  A later op on the same stream
needs nothing; one on another stream first enqueues a stream wait on the
event (no host round trip); a CPU op, and ``wait_for_var``/``wait_all``,
synchronise the event on the host.  Each var remembers the event of its last
GPU write and of the GPU reads since, so a GPU writer also waits for earlier
GPU readers on other streams.  An op whose inputs all come from one compute
stream goes to that stream; otherwise to the least loaded one.
"""

from __future__ import annotations

import functools
import threading
from queue import SimpleQueue
from time import perf_counter_ns

from scheduler import WorkerPool
from scheduler.runtime import CudaError, RuntimeUnavailable, get_runtime

from ._device import Device, cpu
from ._engine import Engine
from ._errors import DeviceUnavailableError
from ._op import Op
from ._options import OP_KINDS

__all__ = ["PerDeviceEngine"]

_CPU = cpu()


class _GpuState:
    """GPU work on a var: the event of its last GPU write and of the GPU reads since."""

    __slots__ = ("reads", "write_event", "write_stream")

    def __init__(self, write_event=None, write_stream=None) -> None:
        self.write_event = write_event
        self.write_stream = write_stream
        self.reads: list = []  # (event, stream) of GPU reads after the write


class _Lane:
    """One GPU stream and the host thread that runs the ops placed on it."""

    __slots__ = ("assigned", "device", "name", "pool", "poller", "poller_thread", "role", "stream")

    def __init__(self, device: int, role: str, name: str, stream, pool: WorkerPool) -> None:
        self.device = device
        self.role = role  # compute, h2d or d2h
        self.name = name
        self.stream = stream
        self.pool = pool
        self.assigned = 0
        self.poller: SimpleQueue | None = None  # profiling: events whose end to note
        self.poller_thread: threading.Thread | None = None


class _Gpu:
    __slots__ = ("compute", "d2h", "h2d", "lanes_by_stream")

    def __init__(self, compute: list[_Lane], h2d: _Lane, d2h: _Lane) -> None:
        self.compute = compute
        self.h2d = h2d
        self.d2h = d2h
        self.lanes_by_stream = {id(lane.stream): lane for lane in (*compute, h2d, d2h)}


class PerDeviceEngine(Engine):
    """CPU worker pools and GPU streams, scheduled by one dependency engine."""

    type = "perdevice"

    def _start(self) -> None:
        self._pool_lock = threading.Lock()
        self._cpu = self._new_pool(self.options.workers, "depengine-cpu")
        self._prio: WorkerPool | None = None
        self._copy: WorkerPool | None = None
        self._gpus: dict[int, _Gpu] = {}
        self._rt = None
        self._gpu_used = False
        self._worker_ids = frozenset(self._cpu.thread_ids)
        self._gpu_lock = threading.Lock()

    def _new_pool(self, size: int, name: str, initializer=None) -> WorkerPool:
        return WorkerPool(self._run_in, size, name=name, initializer=initializer)

    def _plan_submit(self):
        return self._cpu.submit

    def threads(self) -> list[threading.Thread]:
        return [t for pool in self._all_pools() for t in pool.threads]

    def gpu_runtime(self, device):
        if not isinstance(device, Device) or device.type != "gpu":
            raise TypeError(f"device={device!r} must be de.gpu(i)")
        self._ensure_gpu(device.index)
        return self._rt

    def _all_pools(self) -> list[WorkerPool]:
        pools = [p for p in (self._cpu, self._prio, self._copy) if p is not None]
        for gpu in self._gpus.values():
            pools.extend(lane.pool for lane in (*gpu.compute, gpu.h2d, gpu.d2h))
        return pools

    def _add_pool_threads(self, pool: WorkerPool) -> None:
        self._worker_ids = self._worker_ids | pool.thread_ids

    # ------------------------------------------------------------- placement
    def _place(self, device, kind, is_async):
        if kind not in OP_KINDS:
            raise ValueError(f"kind={kind!r} must be one of {', '.join(map(repr, OP_KINDS))}")
        if device is None:
            return _CPU, kind
        if not isinstance(device, Device):
            raise TypeError(f"device={device!r} must be de.cpu() or de.gpu(i)")
        if device.type == "gpu":
            self._ensure_gpu(device.index)
        return device, kind

    def _ensure_gpu(self, index: int) -> _Gpu:
        gpu = self._gpus.get(index)
        if gpu is not None:
            return gpu
        with self._pool_lock:
            gpu = self._gpus.get(index)
            if gpu is not None:
                return gpu
            try:
                rt = self._rt or get_runtime()
            except RuntimeUnavailable as exc:
                raise DeviceUnavailableError(f"gpu({index}) is not available: {exc}") from None
            if index >= rt.device_count():
                raise DeviceUnavailableError(f"gpu({index}) does not exist: the {rt.name} runtime has "
                                             f"{rt.device_count()} device(s)")
            self._rt = rt
            bind = functools.partial(rt.bind_thread, index)

            def lane(role: str, name: str) -> _Lane:
                stream = rt.create_stream(index, name)
                pool = self._new_pool(1, f"depengine-{name}", initializer=bind)
                self._add_pool_threads(pool)
                return _Lane(index, role, name, stream, pool)

            compute = [lane("compute", f"gpu{index}-s{k}") for k in range(self.options.gpu_streams)]
            gpu = _Gpu(compute, lane("h2d", f"gpu{index}-h2d"), lane("d2h", f"gpu{index}-d2h"))
            self._gpus[index] = gpu
            self._gpu_used = True
        return gpu

    def _cpu_pool(self, kind: str) -> WorkerPool:
        if kind == "prioritized" and self.options.prioritized_workers:
            pool = self._prio
            if pool is None:
                pool = self._lazy_pool("_prio", self.options.prioritized_workers, "depengine-prio")
            return pool
        if kind == "copy":
            pool = self._copy
            if pool is None:
                pool = self._lazy_pool("_copy", self.options.copy_workers, "depengine-copy")
            return pool
        return self._cpu

    def _lazy_pool(self, attr: str, size: int, name: str) -> WorkerPool:
        with self._pool_lock:
            pool = getattr(self, attr)
            if pool is None:
                pool = self._new_pool(size, name)
                self._add_pool_threads(pool)
                setattr(self, attr, pool)
        return pool

    def _route(self, op: Op) -> WorkerPool:
        """The pool that runs ``op``; for stream ops, also choose ``op.stream``."""
        device = op.device
        if device is _CPU or device.type == "cpu":
            if op.kind == "copy" and self._gpu_used:
                lane = self._d2h_lane(op)
                if lane is not None:
                    op.stream = lane.stream
                    op._p_lane = lane.name
            return self._cpu_pool(op.kind)
        gpu = self._gpus[device.index]
        lane = gpu.h2d if op.kind == "copy" else self._compute_lane(gpu, op)
        lane.assigned += 1
        op.stream = lane.stream
        op._p_lane = lane.name
        return lane.pool

    def _compute_lane(self, gpu: _Gpu, op: Op) -> _Lane:
        target = None
        for v in op.reads + op.writes:
            g = v._gpu
            if g is None or g.write_stream is None:
                continue
            lane = gpu.lanes_by_stream.get(id(g.write_stream))
            if lane is None or lane.role != "compute" or (target is not None and lane is not target):
                target = None
                break
            target = lane
        if target is not None:
            return target
        return min(gpu.compute, key=_lane_load)

    def _d2h_lane(self, op: Op) -> _Lane | None:
        for v in op.reads:
            g = v._gpu
            if g is not None and g.write_stream is not None:
                return self._gpus[g.write_stream.device].d2h
        return None

    def _dispatch(self, op: Op) -> None:
        self._route(op).submit(op)

    def _run_in(self, op: Op, pool: WorkerPool) -> list:
        """What every pool of this engine runs: GPU ordering, the op, then routing of its successors."""
        stream = op.stream
        ready = None
        if stream is not None:
            self._rt.bind_thread(stream.device)
            self._stream_waits(op, stream)
        elif self._gpu_used:
            try:
                self._host_waits(op)
            except CudaError as exc:  # GPU work it depends on failed
                ready = self._complete(op, exc, True)
        if ready is None:
            ready = self._execute(op)
        if not ready:
            return ready
        mine = []
        for nxt in ready:
            target = self._route(nxt)
            if target is pool:
                mine.append(nxt)
            else:
                target.submit(nxt)
        return mine

    def _stream_waits(self, op: Op, stream) -> None:
        rt = self._rt
        seen = set()

        def wait(event, on):
            if on is not stream and id(event) not in seen:
                seen.add(id(event))
                rt.stream_wait(stream, event)

        for v in op.reads:
            g = v._gpu
            if g is not None and g.write_event is not None:
                wait(g.write_event, g.write_stream)
        for v in op.writes:
            g = v._gpu
            if g is not None:
                if g.write_event is not None:
                    wait(g.write_event, g.write_stream)
                for event, on in g.reads:
                    wait(event, on)

    def _host_waits(self, op: Op) -> None:
        rt = self._rt
        for v in op.reads:
            g = v._gpu
            if g is not None and g.write_event is not None:
                rt.synchronize(g.write_event)
        for v in op.writes:
            g = v._gpu
            if g is not None:
                if g.write_event is not None:
                    rt.synchronize(g.write_event)
                for event, _ in g.reads:
                    rt.synchronize(event)
                v._gpu = None  # every GPU use of v is finished

    def _stream_done(self, op: Op) -> None:
        self._record(op, op.stream)

    def _record(self, op: Op, stream) -> None:
        """The op's work is enqueued: record an event and make its vars point at it."""
        rt = self._rt
        event = rt.create_event(stream.device)
        rt.record(event, stream)
        for v in op.writes:
            v._gpu = _GpuState(event, stream)
        for v in op.reads:
            g = v._gpu
            if g is None:
                with self._gpu_lock:
                    g = v._gpu
                    if g is None:
                        g = v._gpu = _GpuState()
            reads = g.reads
            if len(reads) >= 16:  # drop reads that have finished
                reads[:] = [r for r in reads if not rt.query(r[0])]
            reads.append((event, stream))
        if self._prof is not None and getattr(op, "_p_engine", None) is not None:
            self._poll_gpu_end(op, event)

    def _poll_gpu_end(self, op: Op, event) -> None:
        """While profiling: note when the op's GPU work really finished."""
        gpu = self._gpus[op.device.index] if op.device.type == "gpu" else None
        lanes = gpu.lanes_by_stream if gpu else {lane_id: lane for g in self._gpus.values()
                                                 for lane_id, lane in g.lanes_by_stream.items()}
        lane = lanes.get(id(op.stream))
        if lane is None:
            return
        if lane.poller is None:
            with self._pool_lock:
                if lane.poller is None:
                    q: SimpleQueue = SimpleQueue()
                    t = threading.Thread(target=self._poller, args=(q, lane.device), daemon=True,
                                         name=f"depengine-poll-{lane.name}")
                    t.start()
                    lane.poller_thread = t
                    lane.poller = q
        lane.poller.put((self._prof, op, event))

    def _poller(self, q: SimpleQueue, device: int) -> None:
        self._rt.bind_thread(device)
        while True:
            item = q.get()
            if item is None:
                return
            prof, op, event = item
            try:
                self._rt.synchronize(event)
            except CudaError:
                pass  # the failure reaches whoever waits on the op's vars
            prof.gpu_finished(op, perf_counter_ns())

    # ------------------------------------------------------------------ waits
    def _wait_gpu_for_var(self, var) -> None:
        g = var._gpu
        if g is not None and g.write_event is not None:
            self._rt.synchronize(g.write_event)

    def _wait_gpu_all(self) -> None:
        for gpu in list(self._gpus.values()):
            for lane in (*gpu.compute, gpu.h2d, gpu.d2h):
                self._rt.synchronize_stream(lane.stream)

    def _in_op(self) -> bool:
        return threading.get_ident() in self._worker_ids

    def _stop(self) -> None:
        for pool in self._all_pools():
            pool.close()
        lanes = [lane for gpu in self._gpus.values() for lane in (*gpu.compute, gpu.h2d, gpu.d2h)]
        for lane in lanes:
            if lane.poller is not None:
                lane.poller.put(None)  # after the events already queued
        for lane in lanes:
            if lane.poller_thread is not None:
                lane.poller_thread.join()
        for lane in lanes:
            try:
                self._rt.close_stream(lane.stream)
            except CudaError:
                pass  # a failed kernel was already reported to its waiters

    def __repr__(self) -> str:
        base = super().__repr__()[:-1]
        gpus = ", ".join(f"gpu{i}: {len(g.compute)} streams" for i, g in sorted(self._gpus.items()))
        return f"{base} {gpus}>" if gpus else base + ">"


def _lane_load(lane: _Lane) -> tuple[int, int]:
    return (len(lane.pool.queue), lane.assigned)
