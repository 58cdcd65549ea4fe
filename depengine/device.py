"""Devices an op can run on.  ``cpu()`` always exists; GPUs come from ``depengine.gpu``."""

from __future__ import annotations

__all__ = ["Device", "cpu"]


class Device:
    """One place ops run: ``cpu(0)`` or ``gpu(i)``.  Compare with ``==``; hashable."""

    __slots__ = ("index", "type")

    def __init__(self, type: str, index: int = 0) -> None:
        if type not in ("cpu", "gpu"):
            raise ValueError(f"device type {type!r} must be 'cpu' or 'gpu'")
        if index.__class__ is not int or index < 0:
            raise ValueError(f"device index={index!r} must be an int >= 0")
        self.type = type
        self.index = index

    @property
    def is_gpu(self) -> bool:
        return self.type == "gpu"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Device) and other.type == self.type and other.index == self.index
        )

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __repr__(self) -> str:
        return f"{self.type}({self.index})"


_CPU = Device("cpu", 0)


def cpu() -> Device:
    """The host CPU (one device, however many cores)."""
    return _CPU
