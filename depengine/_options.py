"""Engine types and options: one dataclass, validated in one place, with environment defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from scheduler import usable_cores

__all__ = ["CORES", "DEFAULT_TYPE", "ENGINE_TYPES", "OP_KINDS", "EngineOptions", "engine_class",
           "resolve_core", "resolve_type"]

ENGINE_TYPES = ("naive", "threaded", "perdevice", "mpi")
DEFAULT_TYPE = "perdevice"
# what an op's ``kind`` may be: which pool (or stream) runs it
OP_KINDS = ("normal", "prioritized", "copy", "async")
# the two implementations of every engine type: the compiled core, and the pure-Python reference
CORES = ("compiled", "python")

# option name -> environment variable
_ENV = {
    "workers": "DEPENGINE_CPU_WORKERS",
    "prioritized_workers": "DEPENGINE_PRIORITIZED_WORKERS",
    "copy_workers": "DEPENGINE_COPY_WORKERS",
    "gpu_streams": "DEPENGINE_GPU_STREAMS",
}
_PERDEVICE_ONLY = ("prioritized_workers", "copy_workers", "gpu_streams")


def resolve_type(type: str | None) -> str:
    """The engine type to build: ``type``, else ``DEPENGINE_ENGINE``, else the default."""
    source = "type"
    if type is None:
        type = os.environ.get("DEPENGINE_ENGINE") or DEFAULT_TYPE
        source = "DEPENGINE_ENGINE"
    if type not in ENGINE_TYPES:
        raise ValueError(f"{source}={type!r} is not an engine type; "
                         f"expected one of {', '.join(ENGINE_TYPES)}")
    return type


def resolve_core(core: str | None) -> str:
    """The implementation to build: ``core``, else "python" under ``DEPENGINE_PURE_PYTHON``, else the
    compiled core where it is built."""
    from ._compiled import COMPILED_AVAILABLE, WHY_NOT_COMPILED

    if core is None:
        return "compiled" if COMPILED_AVAILABLE and not os.environ.get("DEPENGINE_PURE_PYTHON") else "python"
    if core not in CORES:
        raise ValueError(f"core={core!r} must be one of {', '.join(map(repr, CORES))}")
    if core == "compiled" and not COMPILED_AVAILABLE:
        raise ValueError(f"core='compiled': the compiled core is not available here ({WHY_NOT_COMPILED})")
    return core


def engine_class(type: str, core: str = "python") -> type:
    """The class of engine ``type`` on implementation ``core`` (imported on first use)."""
    if type == "mpi":  # a local engine of either core per rank; imports mpi4py only when built
        from .mpi import MpiEngine

        return MpiEngine
    if core == "compiled":
        from ._cengine import CompiledEngine

        return CompiledEngine
    if type == "naive":
        from ._naive import NaiveEngine

        return NaiveEngine
    if type == "threaded":
        from ._threaded import ThreadedEngine

        return ThreadedEngine
    from ._perdevice import PerDeviceEngine

    return PerDeviceEngine


@dataclass(frozen=True)
class EngineOptions:
    """Sizes of an engine's thread pools and GPU streams.

    ``workers``: CPU worker threads (default ``DEPENGINE_CPU_WORKERS`` or the
    usable cores).  Per-device engine only: ``prioritized_workers`` (default
    1), ``copy_workers`` (default 1), ``gpu_streams`` compute streams per GPU
    (default 2); each also read from its ``DEPENGINE_*`` variable.  ``core``:
    ``"compiled"`` or ``"python"`` (see :func:`resolve_core`).
    """

    type: str
    workers: int
    core: str = "python"
    prioritized_workers: int = 1
    copy_workers: int = 1
    gpu_streams: int = 2

    @classmethod
    def create(cls, type: str, **options) -> EngineOptions:
        core = resolve_core(options.pop("core", None))
        known = {f.name for f in fields(cls)} - {"type", "core"}
        for name in options:
            if name not in known:
                raise TypeError(f"Engine() got an unknown option {name!r}; known: {', '.join(sorted(known))}")
            if type != "perdevice" and name in _PERDEVICE_ONLY and options[name] is not None:
                raise TypeError(f"option {name!r} only applies to Engine('perdevice'), not {type!r}")
        values = {}
        for name in known:
            value = options.get(name)
            source = name
            if value is None:
                env = os.environ.get(_ENV[name])
                if env:
                    source = _ENV[name]
                    try:
                        value = int(env)
                    except ValueError:
                        raise ValueError(f"{source}={env!r} must be an integer") from None
            if value is None:
                continue
            if value.__class__ is not int:
                raise TypeError(f"{source}={value!r} must be an int")
            low = 0 if name == "prioritized_workers" else 1
            if value < low:
                raise ValueError(f"{source}={value!r} must be >= {low}")
            values[name] = value
        values.setdefault("workers", usable_cores())
        return cls(type=type, core=core, **values)
