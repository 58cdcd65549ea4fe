"""The GPUs of a per-device engine: streams, the threads that feed them, and the events between them.

Both implementations of the per-device engine (the Python reference in
``_perdevice.py`` and the compiled core, ``_cengine.py``) place their GPU ops
here.  Per GPU, created on first use: ``gpu_streams`` compute streams plus
one host-to-device stream (``copy`` ops with ``device=gpu(i)``) and one
device-to-host stream, each fed by one host thread (a ``WorkerPool`` of
size 1 whose callback the engine gives).

GPU semantics (MXNet 2.0's asynchronous GPU engine): a GPU op's function
enqueues work on ``ctx.stream`` and returns; :meth:`GpuLanes.record` then
records an event on that stream and makes the op's vars point at it.  A later
op on the same stream needs nothing; one on another stream first enqueues a
stream wait on the event (:meth:`stream_waits`, no host round trip); a CPU
op, and ``wait_for_var``/``wait_all``, synchronise the event on the host
(:meth:`host_waits`).  Each var remembers (``var._gpu``) the event of its last
GPU write and of the GPU reads since, so a GPU writer also waits for earlier
GPU readers on other streams.  An op whose inputs all come from one compute
stream goes to that stream; otherwise to the least loaded one.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from queue import SimpleQueue
from time import perf_counter_ns

from scheduler import WorkerPool
from scheduler.runtime import CudaError, RuntimeUnavailable, get_runtime

from ._errors import DeviceUnavailableError

__all__ = ["GpuLanes"]


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

    def lanes(self) -> tuple[_Lane, ...]:
        return (*self.compute, self.h2d, self.d2h)


class GpuLanes:
    """The GPUs an engine has placed ops on.

    ``run(op, pool)`` is what a lane's thread calls for each op;
    ``new_threads(pool)`` tells the engine about the threads of a new lane;
    ``recorder()`` returns the engine's Recorder while it profiles.
    """

    def __init__(self, run: Callable, gpu_streams: int, new_threads: Callable, recorder: Callable,
                 thread_init: Callable | None = None) -> None:
        self._run = run
        self._streams = gpu_streams
        self._new_threads = new_threads
        self._recorder = recorder
        self._thread_init = thread_init
        self.gpus: dict[int, _Gpu] = {}
        self.rt = None
        self.used = False
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()

    # ----------------------------------------------------------- placement
    def ensure(self, index: int) -> _Gpu:
        """GPU ``index``'s lanes, started on first use; DeviceUnavailableError says why not."""
        gpu = self.gpus.get(index)
        if gpu is not None:
            return gpu
        with self._lock:
            gpu = self.gpus.get(index)
            if gpu is not None:
                return gpu
            try:
                rt = self.rt or get_runtime()
            except RuntimeUnavailable as exc:
                raise DeviceUnavailableError(f"gpu({index}) is not available: {exc}") from None
            if index >= rt.device_count():
                raise DeviceUnavailableError(f"gpu({index}) does not exist: the {rt.name} runtime has "
                                             f"{rt.device_count()} device(s)")
            self.rt = rt
            bind = functools.partial(_lane_thread_init, rt, index, self._thread_init)

            def lane(role: str, name: str) -> _Lane:
                stream = rt.create_stream(index, name)
                pool = WorkerPool(self._run, 1, name=f"depengine-{name}", initializer=bind)
                self._new_threads(pool)
                return _Lane(index, role, name, stream, pool)

            compute = [lane("compute", f"gpu{index}-s{k}") for k in range(self._streams)]
            gpu = _Gpu(compute, lane("h2d", f"gpu{index}-h2d"), lane("d2h", f"gpu{index}-d2h"))
            self.gpus[index] = gpu
            self.used = True
        return gpu

    def route(self, op) -> WorkerPool:
        """The lane pool of a GPU op; sets ``op.stream`` (and the profiler's lane)."""
        gpu = self.gpus[op.device.index]
        lane = gpu.h2d if op.kind == "copy" else self._compute_lane(gpu, op)
        lane.assigned += 1
        op.stream = lane.stream
        op._p_lane = lane.name
        return lane.pool

    def assign_d2h(self, op) -> None:
        """A CPU copy op that reads GPU data runs on that GPU's device-to-host stream."""
        for v in op.reads:
            g = v._gpu
            if g is not None and g.write_stream is not None:
                lane = self.gpus[g.write_stream.device].d2h
                op.stream = lane.stream
                op._p_lane = lane.name
                return

    def _compute_lane(self, gpu: _Gpu, op) -> _Lane:
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

    # ------------------------------------------------------------ ordering
    def stream_waits(self, op, stream) -> None:
        """Before a stream op: wait, on the stream, for other streams' work on its vars."""
        rt = self.rt
        rt.bind_thread(stream.device)
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

    def host_waits(self, op) -> None:
        """Before a host op: synchronise the GPU work on its vars."""
        rt = self.rt
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

    def before(self, op) -> BaseException | None:
        """Everything a per-device engine does before running ``op`` (a CudaError to fail it with)."""
        stream = op.stream
        if stream is not None:
            self.stream_waits(op, stream)
            return None
        try:
            self.host_waits(op)
        except CudaError as exc:  # GPU work it depends on failed
            return exc
        return None

    def record(self, op) -> None:
        """The op's work is enqueued: record an event and make its vars point at it."""
        rt = self.rt
        stream = op.stream
        event = rt.create_event(stream.device)
        rt.record(event, stream)
        for v in op.writes:
            v._gpu = _GpuState(event, stream)
        for v in op.reads:
            g = v._gpu
            if g is None:
                with self._state_lock:
                    g = v._gpu
                    if g is None:
                        g = v._gpu = _GpuState()
            reads = g.reads
            if len(reads) >= 16:  # drop reads that have finished
                reads[:] = [r for r in reads if not rt.query(r[0])]
            reads.append((event, stream))
        prof = self._recorder()
        if prof is not None and getattr(op, "_p_engine", None) is not None:
            self._poll_end(prof, op, event)

    def _poll_end(self, prof, op, event) -> None:
        """While profiling: note when the op's GPU work really finished."""
        lane = next((g.lanes_by_stream[id(op.stream)] for g in self.gpus.values()
                     if id(op.stream) in g.lanes_by_stream), None)
        if lane is None:
            return
        if lane.poller is None:
            with self._lock:
                if lane.poller is None:
                    q: SimpleQueue = SimpleQueue()
                    t = threading.Thread(target=self._poller, args=(q, lane.device), daemon=True,
                                         name=f"depengine-poll-{lane.name}")
                    t.start()
                    lane.poller_thread = t
                    lane.poller = q
        lane.poller.put((prof, op, event))

    def _poller(self, q: SimpleQueue, device: int) -> None:
        self.rt.bind_thread(device)
        while True:
            item = q.get()
            if item is None:
                return
            prof, op, event = item
            try:
                self.rt.synchronize(event)
            except CudaError:
                pass  # the failure reaches whoever waits on the op's vars
            prof.gpu_finished(op, perf_counter_ns())

    # --------------------------------------------------------------- waits
    def wait_var(self, var) -> None:
        g = var._gpu
        if g is not None and g.write_event is not None:
            self.rt.synchronize(g.write_event)

    def wait_all(self) -> None:
        for gpu in list(self.gpus.values()):
            for lane in gpu.lanes():
                self.rt.synchronize_stream(lane.stream)

    # ------------------------------------------------------------ lifetime
    def pools(self) -> list[WorkerPool]:
        return [lane.pool for gpu in self.gpus.values() for lane in gpu.lanes()]

    def stop(self) -> None:
        """Close every lane (their pools first), then the pollers and the streams."""
        for pool in self.pools():
            pool.close()
        lanes = [lane for gpu in self.gpus.values() for lane in gpu.lanes()]
        for lane in lanes:
            if lane.poller is not None:
                lane.poller.put(None)  # after the events already queued
        for lane in lanes:
            if lane.poller_thread is not None:
                lane.poller_thread.join()
        for lane in lanes:
            try:
                self.rt.close_stream(lane.stream)
            except CudaError:
                pass  # a failed kernel was already reported to its waiters

    def describe(self) -> str:
        return ", ".join(f"gpu{i}: {len(g.compute)} streams" for i, g in sorted(self.gpus.items()))


def _lane_thread_init(rt, index: int, extra) -> None:
    rt.bind_thread(index)
    if extra is not None:
        extra()


def _lane_load(lane: _Lane) -> tuple[int, int]:
    return (len(lane.pool.queue), lane.assigned)
