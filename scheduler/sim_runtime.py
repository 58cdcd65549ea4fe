"""A simulated GPU runtime: streams are threads, kernels are numba functions.

It follows CUDA's rules where the engine depends on them: work on one stream
runs in order; ``record`` captures the work enqueued so far; ``stream_wait``
captures the event's latest record at call time, and waiting on a
never-recorded event is a no-op; ``query``/``synchronize`` look at the latest
record.  Kernels run on the stream's thread; numba kernels release the GIL,
so two streams really overlap.

Hazards are found when work is *enqueued*, not by luck of timing.  Every
stream keeps a vector clock; ``stream_wait`` merges the event's clock into
the stream's, a host ``synchronize`` merges it into the host clock, and every
enqueue merges the host clock (work submitted after the host saw an event
complete is ordered after it).  Each device buffer remembers its last write
and the reads since, with their clocks; an access that is not ordered after
a conflicting one on another stream raises :class:`HazardError`.

Graph capture follows CUDA's too: between ``begin_capture(stream)`` and
``end_capture(stream)`` work enqueued on the stream is recorded, not run
(host code around it runs once, at capture); ``launch_graph`` replays the
recorded items on a stream in order, checking hazards at launch.  As in
CUDA without auto-free, memory allocated during a capture must be freed in
it, and a capturing stream cannot record, wait on or synchronise events.

``DEPENGINE_SIM_GPUS`` sets the number of simulated devices (default 2).
"""

from __future__ import annotations

import itertools
import os
import threading
from queue import SimpleQueue

import numpy as np

from .runtime import CudaError, HazardError, KernelSource

__all__ = ["SimBuffer", "SimEvent", "SimGraph", "SimRuntime", "SimStream"]


class _Clock(dict):
    """stream id -> number of work items of that stream known to have happened before."""

    def merge(self, other: dict) -> None:
        for k, v in other.items():
            if self.get(k, 0) < v:
                self[k] = v

    def covers(self, stream_id: int, ts: int) -> bool:
        return self.get(stream_id, 0) >= ts


_HOST = 0  # the host's entry in vector clocks (streams count from 1)


class SimStream:
    """A stream: one thread running its work items in order."""

    _ids = itertools.count(1)

    def __init__(self, device: int, name: str) -> None:
        self.id = next(self._ids)
        self.device = device
        self.name = name
        self.clock = _Clock()
        self.error: BaseException | None = None
        self.capture: SimGraph | None = None  # set between begin_capture and end_capture
        self.enqueued = 0
        self._work: SimpleQueue = SimpleQueue()
        self._done = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"depengine-sim-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            try:
                if self.error is None or getattr(item, "always", False):
                    item()
            except BaseException as exc:  # a kernel failed: sticky, like a CUDA context error
                if self.error is None:
                    self.error = exc
            with self._cond:
                self._done += 1
                self._cond.notify_all()

    def enqueue(self, item) -> int:
        self.enqueued += 1
        self._work.put(item)
        return self.enqueued

    def wait_until(self, count: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._done >= count)

    def close(self) -> None:
        self._work.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __repr__(self) -> str:
        return f"<SimStream {self.name} queued={self.enqueued - self._done}>"


class SimEvent:
    """An event: a generation counter bumped by each record."""

    def __init__(self, device: int) -> None:
        self.device = device
        self.recorded = 0          # generation of the latest record
        self.completed = 0         # highest generation whose work has finished
        self.clock = _Clock()      # the recording stream's clock at the latest record
        self.stream: SimStream | None = None
        self._cond = threading.Condition()

    def _complete(self, generation: int) -> None:
        with self._cond:
            if generation > self.completed:
                self.completed = generation
            self._cond.notify_all()

    def _wait_for(self, generation: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.completed >= generation)


class SimBuffer:
    """Device memory: a byte array on one simulated device, with access history."""

    def __init__(self, device: int, nbytes: int) -> None:
        self.device = device
        self.nbytes = nbytes
        self.data = np.zeros(nbytes, dtype=np.uint8)
        self.last_write: tuple[int, int] | None = None   # (stream id, item number)
        self.reads: dict[int, int] = {}                  # stream id -> item number
        self.freed = False
        self.graph: SimGraph | None = None  # the graph that allocated it during a capture
        self.freed_in_graph = False

    def view(self, dtype, shape, offset: int = 0) -> np.ndarray:
        size = int(np.prod(shape, dtype=np.int64))
        return self.data.view(dtype)[offset:offset + size].reshape(shape)

    def __repr__(self) -> str:
        return f"<SimBuffer gpu{self.device} {self.nbytes} bytes{' freed' if self.freed else ''}>"


class SimGraph:
    """A captured graph: the items enqueued during the capture, with their accesses."""

    def __init__(self, device: int) -> None:
        self.device = device
        self.items: list = []       # (accesses, what, item or None)
        self.allocated: list = []   # buffers allocated during the capture

    def __repr__(self) -> str:
        return f"<SimGraph gpu{self.device} items={len(self.items)}>"


class _Module(dict):
    """Compiled kernels by name."""


class SimRuntime:
    """The simulated runtime (see the module docstring)."""

    name = "sim"

    def __init__(self, ndevices: int | None = None) -> None:
        if ndevices is None:
            env = os.environ.get("DEPENGINE_SIM_GPUS", "2")
            try:
                ndevices = int(env)
            except ValueError:
                raise ValueError(f"DEPENGINE_SIM_GPUS={env!r} must be an integer") from None
        if ndevices < 1:
            raise ValueError(f"DEPENGINE_SIM_GPUS={ndevices} must be >= 1")
        self.ndevices = ndevices
        self._lock = threading.Lock()
        self._host = _Clock()

    # ---------------------------------------------------------------- devices
    def device_count(self) -> int:
        return self.ndevices

    def device_name(self, index: int) -> str:
        return f"simulated GPU {index}"

    def bind_thread(self, device: int) -> None:
        """Nothing to bind: the simulator has no per-thread context."""

    # -------------------------------------------------------- streams, events
    def create_stream(self, device: int, name: str) -> SimStream:
        return SimStream(device, name)

    def close_stream(self, stream: SimStream) -> None:
        stream.close()

    def create_event(self, device: int) -> SimEvent:
        return SimEvent(device)

    def _tick(self, stream: SimStream) -> int:
        """Advance ``stream``'s clock for one new item (lock held); returns its number."""
        stream.clock.merge(self._host)
        ts = stream.clock.get(stream.id, 0) + 1
        stream.clock[stream.id] = ts
        return ts

    def record(self, event: SimEvent, stream: SimStream) -> None:
        with self._lock:
            self._not_capturing(stream, "event record")
            self._tick(stream)
            event.recorded += 1
            generation = event.recorded
            event.clock = _Clock(stream.clock)
            event.stream = stream

            def mark(generation=generation):
                event._complete(generation)
            mark.always = True  # events complete even after a sticky error
            stream.enqueue(mark)

    def stream_wait(self, stream: SimStream, event: SimEvent) -> None:
        with self._lock:
            self._not_capturing(stream, "event wait")
            if not event.recorded:
                return  # CUDA: waiting on a never-recorded event does nothing
            generation = event.recorded
            stream.clock.merge(event.clock)
            self._tick(stream)

            def wait(generation=generation):
                event._wait_for(generation)
            wait.always = True
            stream.enqueue(wait)

    def query(self, event: SimEvent) -> bool:
        return event.completed >= event.recorded

    def synchronize(self, event: SimEvent) -> None:
        generation = event.recorded
        event._wait_for(generation)
        with self._lock:
            self._host.merge(event.clock)
        if event.stream is not None and event.stream.error is not None:
            raise _as_cuda_error(event.stream)

    def synchronize_stream(self, stream: SimStream) -> None:
        with self._lock:
            self._not_capturing(stream, "stream synchronize")
            count = stream.enqueued
            clock = _Clock(stream.clock)
        stream.wait_until(count)
        with self._lock:
            self._host.merge(clock)
        if stream.error is not None:
            raise _as_cuda_error(stream)

    def _submit(self, stream: SimStream, accesses, what: str, item=None) -> None:
        """Check and enqueue one item of work (lock held), or add it to the stream's capture."""
        if stream.capture is not None:
            stream.capture.items.append((accesses, what, item))
            return
        self._access(stream, accesses, what)
        if item is not None:
            stream.enqueue(item)

    @staticmethod
    def _not_capturing(stream: SimStream, what: str) -> None:
        if stream.capture is not None:
            raise CudaError(f"CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: {what} on stream {stream.name} "
                            "while it is capturing a graph")

    # ---------------------------------------------------------- graph capture
    def begin_capture(self, stream: SimStream) -> None:
        with self._lock:
            if stream.capture is not None:
                raise CudaError(f"CUDA_ERROR_ILLEGAL_STATE: stream {stream.name} is already capturing")
            stream.capture = SimGraph(stream.device)

    def end_capture(self, stream: SimStream) -> SimGraph:
        """The captured graph, ready to launch; raises CudaError if it cannot be."""
        with self._lock:
            graph, stream.capture = stream.capture, None
        if graph is None:
            raise CudaError(f"CUDA_ERROR_ILLEGAL_STATE: stream {stream.name} is not capturing")
        live = [buf for buf in graph.allocated if not buf.freed_in_graph]
        if live:
            raise CudaError(f"CUDA_ERROR_INVALID_VALUE: {len(live)} allocation(s) made during the capture "
                            "are not freed in it")
        return graph

    def abort_capture(self, stream: SimStream) -> None:
        """End a capture and drop what it recorded (never raises)."""
        with self._lock:
            stream.capture = None

    def launch_graph(self, graph: SimGraph, stream: SimStream) -> None:
        """Replay a captured graph on ``stream``, item by item, in capture order."""
        if graph.device != stream.device:
            raise CudaError(f"CUDA_ERROR_INVALID_VALUE: graph of gpu{graph.device} launched on "
                            f"gpu{stream.device}")
        with self._lock:
            self._not_capturing(stream, "graph launch")
            for accesses, what, item in graph.items:
                self._access(stream, accesses, what)
                if item is not None:
                    stream.enqueue(item)

    def destroy_graph(self, graph: SimGraph) -> None:
        graph.items = []

    # ----------------------------------------------------------------- memory
    def alloc(self, device: int, nbytes: int, stream: SimStream) -> SimBuffer:
        buf = SimBuffer(device, nbytes)
        with self._lock:
            if stream.capture is not None:
                buf.graph = stream.capture
                stream.capture.allocated.append(buf)
            self._submit(stream, [(buf, "w")], "alloc")
        return buf

    def free(self, buf: SimBuffer, stream: SimStream | None) -> None:
        """Free ``buf`` in stream order, or at once (``stream=None``, after the host synchronised)."""
        if stream is None:
            self.check_host_access(buf, "w", "free")
            buf.freed = True
            buf.data = np.zeros(0, np.uint8)
            return
        with self._lock:
            if stream.capture is not None:
                if buf.graph is not stream.capture:
                    raise CudaError("CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: freeing, in a capture, memory "
                                    "the capture did not allocate")
                buf.freed_in_graph = True  # the graph owns it: each launch reuses it
                self._submit(stream, [(buf, "w")], "free")
                return

            def release():
                buf.freed = True
            self._submit(stream, [(buf, "w")], "free", release)

    def copy_htod(self, dst: SimBuffer, src: np.ndarray, stream: SimStream, offset: int = 0) -> None:
        """Copy host ``src`` into ``dst`` from byte ``offset`` on."""
        raw = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
        self._check_size(dst, offset + raw.nbytes)
        with self._lock:
            self._submit(stream, [(dst, "w")], "copy_htod",
                         lambda: dst.data.__setitem__(slice(offset, offset + raw.nbytes), raw))

    def copy_dtoh(self, dst: np.ndarray, src: SimBuffer, stream: SimStream, offset: int = 0) -> None:
        """Copy ``src`` from byte ``offset`` on into the C-contiguous host array ``dst``."""
        if not dst.flags.c_contiguous:
            raise ValueError("copy_dtoh needs a C-contiguous host array")
        out = dst.reshape(-1).view(np.uint8)
        self._check_size(src, offset + out.nbytes)
        with self._lock:
            self._submit(stream, [(src, "r")], "copy_dtoh",
                         lambda: out.__setitem__(slice(None), src.data[offset:offset + out.nbytes]))

    def copy_dtod(self, dst: SimBuffer, src: SimBuffer, stream: SimStream) -> None:
        n = min(dst.nbytes, src.nbytes)
        with self._lock:
            self._submit(stream, [(src, "r"), (dst, "w")], "copy_dtod",
                         lambda: dst.data.__setitem__(slice(0, n), src.data[:n]))

    @staticmethod
    def _check_size(buf: SimBuffer, nbytes: int) -> None:
        if nbytes > buf.nbytes:
            raise ValueError(f"copy of {nbytes} bytes into/out of a {buf.nbytes}-byte device buffer")

    # ---------------------------------------------------------------- kernels
    def compile(self, kernels: list[KernelSource]) -> _Module:
        return _Module({k.name: k for k in kernels})

    @staticmethod
    def kernel_arg(buffer: SimBuffer, dtype, shape, offset: int = 0) -> _ArgView:
        """A kernel argument: ``buffer`` from element ``offset`` on, as ``dtype`` and ``shape``."""
        return _ArgView(buffer, dtype, shape, offset)

    def launch(self, kernel: KernelSource, grid, block, args, stream: SimStream) -> None:
        if len(args) != len(kernel.access):
            raise TypeError(f"kernel {kernel.name!r} takes {len(kernel.access)} arguments, got {len(args)}")
        accesses = []
        for mode, arg in zip(kernel.access, args, strict=True):
            if mode:
                if not isinstance(arg, _ArgView):
                    raise TypeError(f"kernel {kernel.name!r}: argument for {mode!r} must be a device "
                                    f"array view, got {type(arg).__name__}")
                if arg.buffer.device != stream.device:
                    raise CudaError(f"CUDA_ERROR_INVALID_VALUE: kernel {kernel.name!r} on gpu{stream.device} "
                                    f"got a buffer of gpu{arg.buffer.device}")
                accesses.append((arg.buffer, mode))
        with self._lock:
            fn = kernel.sim
            values = [a.array() if isinstance(a, _ArgView) else a for a in args]
            self._submit(stream, accesses, f"kernel {kernel.name}", lambda: fn(*values))

    # ---------------------------------------------------------- hazard check
    def check_host_access(self, buf: SimBuffer, mode: str, what: str = "host access") -> None:
        """The host touches device memory directly (as with unified memory): check and record it.

        Raises HazardError unless every conflicting stream access was
        synchronised on the host (``synchronize`` of an event recorded after it).
        """
        with self._lock:
            clock = self._host
            lw = buf.last_write
            if lw is not None and lw[0] != _HOST and not clock.covers(*lw):
                raise HazardError(f"{what} of a buffer written on stream #{lw[0]} without synchronising "
                                  "its event first")
            if "w" in mode:
                for sid, rts in buf.reads.items():
                    if sid != _HOST and not clock.covers(sid, rts):
                        raise HazardError(f"{what} writes a buffer still being read on stream #{sid} "
                                          "without synchronising first")
                ts = clock.get(_HOST, 0) + 1
                clock[_HOST] = ts
                buf.last_write = (_HOST, ts)
                buf.reads = {}

    def _access(self, stream: SimStream, accesses, what: str) -> None:
        """Check and record accesses by the next item of ``stream`` (lock held)."""
        ts = self._tick(stream)
        clock = stream.clock
        for buf, mode in accesses:
            if buf.freed:
                raise HazardError(f"{what} on stream {stream.name}: buffer was freed")
            lw = buf.last_write
            if lw is not None and lw[0] != stream.id and not clock.covers(*lw):
                raise HazardError(
                    f"{what} on stream {stream.name} {'writes' if 'w' in mode else 'reads'} a buffer "
                    f"written on stream #{lw[0]} without waiting for it (missing stream wait on an event)")
            if "w" in mode:
                for sid, rts in buf.reads.items():
                    if sid != stream.id and not clock.covers(sid, rts):
                        raise HazardError(
                            f"{what} on stream {stream.name} writes a buffer still being read on "
                            f"stream #{sid} (missing stream wait on an event)")
        for buf, mode in accesses:
            if "w" in mode:
                buf.last_write = (stream.id, ts)
                buf.reads = {}
            else:
                buf.reads[stream.id] = max(ts, buf.reads.get(stream.id, 0))


class _ArgView:
    """A typed view of a device buffer passed to a kernel."""

    __slots__ = ("buffer", "dtype", "offset", "shape")

    def __init__(self, buffer, dtype, shape, offset: int = 0) -> None:
        self.buffer = buffer
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        self.offset = offset

    def array(self) -> np.ndarray:
        size = int(np.prod(self.shape, dtype=np.int64))
        flat = self.buffer.data.view(self.dtype)
        return flat[self.offset:self.offset + size].reshape(self.shape)


def _as_cuda_error(stream: SimStream) -> CudaError:
    err = CudaError(f"CUDA_ERROR_LAUNCH_FAILED: work on stream {stream.name} failed: "
                    f"{type(stream.error).__name__}: {stream.error}")
    err.__cause__ = stream.error
    return err
