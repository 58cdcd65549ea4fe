"""The real runtime: cuda-python (``cuda.core``, plus ``cuda.bindings`` where it lacks a call).

Imported only when a real GPU is asked for.  Without a driver, cuda-python's
``cuInit`` raises ``cuda.pathfinder.DynamicLibNotFoundError`` (a
``RuntimeError``) instead of returning an error code; that and every other
reason for not having a GPU become :class:`RuntimeUnavailable` with the
reason in words.  No Python host callbacks are enqueued on streams (they can
deadlock against the GIL): the engine synchronises events from its own
threads.
"""

from __future__ import annotations

import threading

import numpy as np

from .runtime import CudaError, KernelSource, RuntimeUnavailable

__all__ = ["CudaRuntime", "check", "nvrtc_compile"]


def check(result):
    """Unwrap a cuda.bindings result ``(err, *values)``; raise CudaError on failure."""
    from cuda.bindings import driver, nvrtc

    err, *values = result if isinstance(result, tuple) else (result,)
    if isinstance(err, driver.CUresult):
        if err != driver.CUresult.CUDA_SUCCESS:
            _, name = driver.cuGetErrorName(err)
            _, desc = driver.cuGetErrorString(err)
            raise CudaError(f"{_text(name)}: {_text(desc)}")
    elif isinstance(err, nvrtc.nvrtcResult) and err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, desc = nvrtc.nvrtcGetErrorString(err)
        raise CudaError(f"{err.name}: {_text(desc)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _text(b) -> str:
    return b.decode() if isinstance(b, bytes) else str(b)


def nvrtc_compile(source: str, name: str, arch: str = "sm_90") -> bytes:
    """Compile CUDA C to a cubin with NVRTC (no GPU or driver needed); errors carry the log."""
    from cuda.bindings import nvrtc

    prog = check(nvrtc.nvrtcCreateProgram(source.encode(), f"{name}.cu".encode(), 0, [], []))
    try:
        opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            size = check(nvrtc.nvrtcGetProgramLogSize(prog))
            log = b" " * size
            check(nvrtc.nvrtcGetProgramLog(prog, log))
            raise CudaError(f"NVRTC could not compile kernel {name!r} for {arch}:\n{_text(log).strip()}")
        size = check(nvrtc.nvrtcGetCUBINSize(prog))
        cubin = b" " * size
        check(nvrtc.nvrtcGetCUBIN(prog, cubin))
        return cubin
    finally:
        check(nvrtc.nvrtcDestroyProgram(prog))


class CudaRuntime:
    """Streams, events, memory and kernels of real NVIDIA GPUs."""

    name = "cuda"

    def __init__(self) -> None:
        try:
            from cuda.bindings import driver
            from cuda.core import Device
        except ImportError as exc:
            raise RuntimeUnavailable(f"cuda-python is not installed ({exc}); install the gpu extra: "
                                     "pip install -e '.[gpu]'") from exc
        self._driver = driver
        self._Device = Device
        try:
            (err,) = driver.cuInit(0)
        except RuntimeError as exc:  # cuda.pathfinder.DynamicLibNotFoundError: no libcuda at all
            raise RuntimeUnavailable(f"no NVIDIA driver: {exc}") from exc
        if err == driver.CUresult.CUDA_ERROR_NO_DEVICE:
            raise RuntimeUnavailable("the NVIDIA driver is loaded but reports no CUDA device")
        if err == driver.CUresult.CUDA_ERROR_INSUFFICIENT_DRIVER:
            raise RuntimeUnavailable(f"the NVIDIA driver is too old for this cuda-python "
                                     f"(driver supports CUDA {self._driver_version()})")
        if err != driver.CUresult.CUDA_SUCCESS:
            _, name = driver.cuGetErrorName(err)
            raise RuntimeUnavailable(f"cuInit failed: {_text(name)}")
        self._count = check(driver.cuDeviceGetCount())
        if self._count == 0:
            raise RuntimeUnavailable("the NVIDIA driver reports no CUDA device")
        self._devices = {}
        self._lock = threading.Lock()
        self._bound = threading.local()

    def _driver_version(self) -> str:
        try:
            v = check(self._driver.cuDriverGetVersion())
            return f"{v // 1000}.{v % 1000 // 10}"
        except Exception:
            return "unknown"

    # ---------------------------------------------------------------- devices
    def device_count(self) -> int:
        return self._count

    def _device(self, index: int):
        with self._lock:
            dev = self._devices.get(index)
            if dev is None:
                dev = self._devices[index] = self._Device(index)
        return dev

    def device_name(self, index: int) -> str:
        return self._device(index).name

    def bind_thread(self, device: int) -> None:
        """Make device ``device``'s primary context current on this thread (once)."""
        if getattr(self._bound, "device", None) != device:
            self._device(device).set_current()
            self._bound.device = device

    # -------------------------------------------------------- streams, events
    def create_stream(self, device: int, name: str):
        self.bind_thread(device)
        return self._device(device).create_stream()

    def close_stream(self, stream) -> None:
        stream.sync()
        stream.close()

    def create_event(self, device: int):
        # cuda.core creates events through streams (Stream.record) or devices.
        self.bind_thread(device)
        return _Event()

    def record(self, event, stream) -> None:
        event.cuda = stream.record()  # a fresh CUDA event capturing the work so far

    def stream_wait(self, stream, event) -> None:
        if event.cuda is not None:  # never recorded: nothing to wait for, as in CUDA
            stream.wait(event.cuda)

    def query(self, event) -> bool:
        return event.cuda is None or event.cuda.is_done

    def synchronize(self, event) -> None:
        if event.cuda is not None:
            event.cuda.sync()

    def synchronize_stream(self, stream) -> None:
        stream.sync()

    # ---------------------------------------------------------- graph capture
    def begin_capture(self, stream) -> None:
        mode = self._driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        check(self._driver.cuStreamBeginCapture(stream.handle, mode))

    def end_capture(self, stream):
        """The captured work as an instantiated graph (``cuGraphExec``) ready to launch."""
        graph = check(self._driver.cuStreamEndCapture(stream.handle))
        try:
            return check(self._driver.cuGraphInstantiateWithFlags(graph, 0))
        finally:
            check(self._driver.cuGraphDestroy(graph))

    def abort_capture(self, stream) -> None:
        """End a capture and drop what it recorded (never raises)."""
        try:
            graph = check(self._driver.cuStreamEndCapture(stream.handle))
            if graph is not None and int(graph):
                self._driver.cuGraphDestroy(graph)
        except Exception:  # an invalidated capture has no graph to drop
            pass

    def launch_graph(self, graph, stream) -> None:
        check(self._driver.cuGraphLaunch(graph, stream.handle))

    def destroy_graph(self, graph) -> None:
        check(self._driver.cuGraphExecDestroy(graph))

    # ----------------------------------------------------------------- memory
    def alloc(self, device: int, nbytes: int, stream):
        self.bind_thread(device)
        return self._device(device).allocate(max(nbytes, 1), stream=stream)

    def free(self, buf, stream) -> None:
        buf.close(stream)

    def copy_htod(self, dst, src: np.ndarray, stream, offset: int = 0) -> None:
        src = np.ascontiguousarray(src)
        check(self._driver.cuMemcpyHtoDAsync(int(dst.handle) + offset, src.ctypes.data, src.nbytes,
                                             stream.handle))

    def copy_dtoh(self, dst: np.ndarray, src, stream, offset: int = 0) -> None:
        if not dst.flags.c_contiguous:
            raise ValueError("copy_dtoh needs a C-contiguous host array")
        check(self._driver.cuMemcpyDtoHAsync(dst.ctypes.data, int(src.handle) + offset, dst.nbytes,
                                             stream.handle))

    def copy_dtod(self, dst, src, stream) -> None:
        n = min(dst.size, src.size)
        check(self._driver.cuMemcpyDtoDAsync(int(dst.handle), int(src.handle), n, stream.handle))

    # ---------------------------------------------------------------- kernels
    def compile(self, kernels: list[KernelSource]) -> dict:
        """One cubin per kernel for the current device's architecture; name -> kernel."""
        from cuda.core import ObjectCode

        dev = self._device(getattr(self._bound, "device", 0))
        arch = f"sm_{dev.compute_capability.major}{dev.compute_capability.minor}"
        module = {}
        for k in kernels:
            code = ObjectCode.from_cubin(nvrtc_compile(k.source, k.name, arch), name=k.name)
            module[k.name] = code.get_kernel(k.name)
        return module

    def launch(self, kernel, grid, block, args, stream) -> None:
        from cuda.core import LaunchConfig, launch

        launch(stream, LaunchConfig(grid=grid, block=block), kernel, *args)

    @staticmethod
    def kernel_arg(buffer, dtype, shape, offset: int = 0):
        """A pointer argument: the buffer's device address plus ``offset`` elements."""
        if not offset:
            return buffer
        return np.uint64(int(buffer.handle) + offset * np.dtype(dtype).itemsize)


class _Event:
    """Holds the CUDA event of the latest record (None before the first)."""

    __slots__ = ("cuda",)

    def __init__(self) -> None:
        self.cuda = None


