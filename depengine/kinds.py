"""Maps an engine kind to its class (imported on first use)."""

from __future__ import annotations

__all__ = ["engine_class"]


def engine_class(kind: str) -> type:
    if kind == "naive":
        from .naive import NaiveEngine

        return NaiveEngine
    if kind == "threaded":
        from .threaded import ThreadedEngine

        return ThreadedEngine
    if kind == "mpi":  # imports mpi4py only when an engine is built
        from .mpi import MpiEngine

        return MpiEngine
    from .perdevice import PerDeviceEngine

    return PerDeviceEngine
