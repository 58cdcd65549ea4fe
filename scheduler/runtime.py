"""The narrow protocol between the scheduler and a GPU runtime, and how one is chosen.

Two runtimes implement :class:`Runtime`: ``CudaRuntime`` (cuda-python, a real
GPU) and ``SimRuntime`` (threads standing in for streams, numba for kernels,
and a hazard check that catches a missing cross-stream wait when the work is
enqueued).  ``DEPENGINE_GPU=sim`` selects the simulator; without it, the real
runtime is tried and a clear :class:`RuntimeUnavailable` says why it cannot
be used.  Nothing here imports CUDA until a runtime is asked for.

The calls are those of :class:`Runtime` below, a ``typing.Protocol`` that
both runtimes satisfy (a test checks every method and its parameters).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "CudaError",
    "HazardError",
    "KernelSource",
    "Runtime",
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


@runtime_checkable
class Runtime(Protocol):
    """What the engine and ops/ call on a GPU runtime, with the runtime's own objects.

    Streams, events, buffers, kernels and graphs are opaque: each runtime
    makes its own and takes only those back.  Every call may raise
    :class:`CudaError`.
    """

    name: str  # "cuda" or "sim"

    # devices
    def device_count(self) -> int: ...
    def device_name(self, index: int) -> str: ...
    def bind_thread(self, device: int) -> None:
        """Make device ``device`` current on the calling thread (CUDA's per-thread contexts)."""

    # streams and events
    def create_stream(self, device: int, name: str) -> Any: ...
    def close_stream(self, stream) -> None: ...
    def create_event(self, device: int) -> Any: ...
    def record(self, event, stream) -> None:
        """The event captures the work enqueued on ``stream`` so far."""
    def stream_wait(self, stream, event) -> None:
        """Later work on ``stream`` waits for the event's latest record at call time (none: no-op)."""
    def query(self, event) -> bool: ...
    def synchronize(self, event) -> None: ...
    def synchronize_stream(self, stream) -> None: ...

    # graph capture of a stream's work
    def begin_capture(self, stream) -> None: ...
    def end_capture(self, stream) -> Any:
        """The captured work as an instantiated graph, ready to launch."""
    def abort_capture(self, stream) -> None:
        """End a capture and drop what it recorded (never raises)."""
    def launch_graph(self, graph, stream) -> None: ...
    def destroy_graph(self, graph) -> None: ...

    # memory (stream-ordered)
    def alloc(self, device: int, nbytes: int, stream) -> Any: ...
    def free(self, buf, stream) -> None: ...
    def copy_htod(self, dst, src, stream, offset: int = 0) -> None: ...
    def copy_dtoh(self, dst, src, stream, offset: int = 0) -> None: ...
    def copy_dtod(self, dst, src, stream) -> None: ...

    # kernels
    def compile(self, kernels: list[KernelSource]) -> Any:
        """One module for these kernels: ``module[name]`` is the kernel to launch."""
    def launch(self, kernel, grid, block, args, stream) -> None: ...
    def kernel_arg(self, buffer, dtype, shape, offset: int = 0) -> Any:
        """A launch argument: ``buffer`` from element ``offset`` on, as ``dtype`` and ``shape``."""


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
