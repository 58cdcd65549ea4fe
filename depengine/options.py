"""Engine options: one dataclass, validated in one place, with environment defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

__all__ = ["KINDS", "EngineOptions", "usable_cores"]

KINDS = ("naive", "threaded", "perdevice", "mpi")
DEFAULT_KIND = "perdevice"

# option name -> (environment variable, kinds that accept it)
_ENV = {
    "workers": "DEPENGINE_CPU_WORKERS",
    "prioritized_workers": "DEPENGINE_PRIORITIZED_WORKERS",
    "copy_workers": "DEPENGINE_COPY_WORKERS",
    "gpu_streams": "DEPENGINE_GPU_STREAMS",
}
_PERDEVICE_ONLY = ("prioritized_workers", "copy_workers", "gpu_streams")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class EngineOptions:
    """Sizes of an engine's thread pools and GPU streams.

    ``workers``: CPU worker threads (default ``DEPENGINE_CPU_WORKERS`` or the
    usable cores).  Per-device engine only: ``prioritized_workers`` (default
    1), ``copy_workers`` (default 1), ``gpu_streams`` compute streams per GPU
    (default 2); each also read from its ``DEPENGINE_*`` variable.
    """

    kind: str
    workers: int
    prioritized_workers: int = 1
    copy_workers: int = 1
    gpu_streams: int = 2

    @staticmethod
    def resolve_kind(kind: str | None) -> str:
        """The engine kind to build: ``kind``, else ``DEPENGINE_ENGINE``, else the default."""
        source = "kind"
        if kind is None:
            kind = os.environ.get("DEPENGINE_ENGINE") or DEFAULT_KIND
            source = "DEPENGINE_ENGINE"
        if kind not in KINDS:
            raise ValueError(f"{source}={kind!r} is not an engine kind; expected one of {', '.join(KINDS)}")
        return kind

    @classmethod
    def create(cls, kind: str, **options) -> EngineOptions:
        known = {f.name for f in fields(cls)} - {"kind"}
        for name in options:
            if name not in known:
                raise TypeError(f"Engine() got an unknown option {name!r}; known: {', '.join(sorted(known))}")
            if kind != "perdevice" and name in _PERDEVICE_ONLY and options[name] is not None:
                raise TypeError(f"option {name!r} only applies to Engine('perdevice'), not {kind!r}")
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
            low = 0 if name in ("prioritized_workers",) else 1
            if value < low:
                raise ValueError(f"{source}={value!r} must be >= {low}")
            values[name] = value
        values.setdefault("workers", usable_cores())
        return cls(kind=kind, **values)
