"""Random numbers whose generator state is an engine var.

Every sampling op writes the generator's state var, so sampling ops run in
push order, and each takes its counter at push time: results depend only on
the seed and the order of calls, never on thread timing, engine kind or
worker count.  The generator is counter-based (SplitMix64 of seed and
counter; Box-Muller for normals) and the CPU kernel and the GPU kernel
compute the same numbers.
"""

from __future__ import annotations

import numpy as np

from . import _cpu, _gpu
from ._core import engine, flush_releases, runtime
from .array import NDArray
from .creation import _device, _shape

__all__ = ["Generator", "normal", "seed", "uniform"]


class Generator:
    """A random generator: ``seed`` plus a counter advanced by every sample."""

    def __init__(self, seed: int = 0) -> None:
        self._engine = engine()
        self._var = self._engine.new_var("rng-state")
        self.seed(seed)

    def seed(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
            raise ValueError(f"seed={seed!r} must be an int in [0, 2**64)")
        self._seed = int(seed)
        self._counter = 0

    def uniform(self, low=0.0, high=1.0, shape=(), dtype=np.float64, device=None) -> NDArray:
        """Uniform samples in [low, high)."""
        return self._sample(False, float(low), float(high), shape, dtype, device)

    def normal(self, loc=0.0, scale=1.0, shape=(), dtype=np.float64, device=None) -> NDArray:
        """Normal samples with mean ``loc`` and standard deviation ``scale``."""
        if scale < 0:
            raise ValueError(f"scale={scale!r} must be >= 0")
        return self._sample(True, float(loc), float(scale), shape, dtype, device)

    def _sample(self, normal, a, b, shape, dtype, device) -> NDArray:
        device = _device(device)
        if np.dtype(dtype).kind != "f":
            raise TypeError(f"dtype {np.dtype(dtype).name}: random samples are float32 or float64")
        flush_releases()
        out = NDArray._empty(_shape(shape), dtype, device, name="random")
        n = out.size
        seed, counter = self._seed, self._counter
        self._counter += 2 * n  # taken at push time: independent of when the op runs
        if device.type == "cpu":
            def fn(ctx):
                _cpu.fill_random(out._data, np.uint64(seed), np.uint64(counter), normal, a, b)
        else:
            def fn(ctx):
                rt = runtime(out._engine, device)
                buf = out._store.ensure(rt, ctx.stream)
                _gpu.launch_1d(rt, device.index, f"random_{_gpu.GPU_DTYPES[out.dtype][0]}", n,
                               [rt.kernel_arg(buf, out.dtype, (n,)), np.uint64(seed), np.uint64(counter),
                                np.int32(normal), np.float64(a), np.float64(b), np.int64(n)], ctx.stream)
        self._engine.push(fn, writes=[out._var, self._var], name="normal" if normal else "uniform",
                          device=None if device.type == "cpu" else device)
        return out


_default: Generator | None = None


def _generator() -> Generator:
    global _default
    if _default is None or _default._engine is not engine():
        _default = Generator(0)
    return _default


def seed(s: int) -> None:
    """Reseed the default generator."""
    _generator().seed(s)


def uniform(low=0.0, high=1.0, shape=(), dtype=np.float64, device=None) -> NDArray:
    return _generator().uniform(low, high, shape, dtype, device)


def normal(loc=0.0, scale=1.0, shape=(), dtype=np.float64, device=None) -> NDArray:
    return _generator().normal(loc, scale, shape, dtype, device)
