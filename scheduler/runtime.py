"""The narrow protocol between the scheduler and a GPU runtime, and how one is chosen.

Two runtimes implement :class:`Runtime`: ``CudaRuntime`` (cuda-python, a real
GPU) and ``SimRuntime`` (threads standing in for streams, numba for kernels,
and a hazard check that catches a missing cross-stream wait when the work is
enqueued).  ``DEPENGINE_GPU=sim`` selects the simulator; without it, the real
runtime is tried and a clear :class:`RuntimeUnavailable` says why it cannot
be used.  Nothing here imports CUDA until a runtime is asked for.

The calls, all taking the runtime's own stream/event/buffer objects:

- ``device_count()``, ``device_name(i)``, ``bind_thread(i)`` (make device i
  current on the calling thread, for CUDA's per-thread contexts)
- ``create_stream(device, name)``, ``create_event(device)``
- ``record(event, stream)``: the event captures the work enqueued so far
- ``stream_wait(stream, event)``: later work on ``stream`` waits for the
  event's latest record *at call time*; a never-recorded event is a no-op
- ``query(event)``, ``synchronize(event)``, ``synchronize_stream(stream)``
- ``alloc(device, nbytes, stream)``, ``free(buffer, stream)`` (stream-ordered)
- ``copy_htod(dst, src_array, stream)``, ``copy_dtoh(dst_array, src, stream)``,
  ``copy_dtod(dst, src, stream)``
- ``compile(kernels)`` -> module with ``module[name]``; ``launch(kernel, grid,
  block, args, stream)``
- ``close_stream(stream)``
- ``begin_capture(stream)``, ``end_capture(stream)`` -> graph (instantiated),
  ``abort_capture(stream)``, ``launch_graph(graph, stream)``,
  ``destroy_graph(graph)``: CUDA graph capture of a stream's work
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "CudaError",
    "HazardError",
    "KernelSource",
    "RuntimeUnavailable",
    "get_runtime",
    "runtime_kind",
]


class RuntimeUnavailable(RuntimeError):
    """No usable GPU runtime; the message names the reason."""


class CudaError(RuntimeError):
    """A CUDA call failed: ``"CUDA_ERROR_X: description"``."""


class HazardError(RuntimeError):
    """Simulated runtime: work was enqueued that races with work on another stream."""


@dataclass(frozen=True)
class KernelSource:
    """One GPU kernel: CUDA C for NVRTC, a numba host function for the simulator.

    ``name`` is the ``extern "C" __global__`` function's name.  ``access``
    gives, per launch argument, ``"r"``, ``"w"`` or ``"rw"`` for device
    buffers and ``""`` for scalars; the simulator checks hazards with it and
    calls ``sim`` with the buffers' arrays and the scalars.
    """

    name: str
    source: str
    sim: Callable
    access: tuple[str, ...]

    def __post_init__(self) -> None:
        if f'"C" __global__ void {self.name}(' not in " ".join(self.source.split()):
            raise ValueError(f"kernel {self.name!r}: its source has no "
                             f"extern \"C\" __global__ void {self.name}(")
        for a in self.access:
            if a not in ("r", "w", "rw", ""):
                raise ValueError(f"kernel {self.name!r}: access {a!r} must be 'r', 'w', 'rw' or ''")


_runtimes: dict[str, object] = {}
_lock = threading.Lock()


def runtime_kind() -> str:
    """``"sim"`` when ``DEPENGINE_GPU=sim``, else ``"cuda"``."""
    value = os.environ.get("DEPENGINE_GPU", "").strip().lower()
    if value in ("", "cuda", "real"):
        return "cuda"
    if value == "sim":
        return "sim"
    raise RuntimeUnavailable(f"DEPENGINE_GPU={value!r} must be 'sim' or unset (a real GPU)")


def get_runtime(kind: str | None = None):
    """The process-wide runtime of ``kind`` (default: ``runtime_kind()``), created once."""
    kind = kind or runtime_kind()
    with _lock:
        rt = _runtimes.get(kind)
        if rt is None:
            if kind == "sim":
                from .sim_runtime import SimRuntime

                rt = SimRuntime()
            else:
                from .cuda_runtime import CudaRuntime

                rt = CudaRuntime()  # raises RuntimeUnavailable with the reason
            _runtimes[kind] = rt
    return rt
