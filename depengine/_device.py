"""Devices an op can run on: ``cpu()`` always, ``gpu(i)`` when a GPU runtime has device i."""

from __future__ import annotations

from scheduler.runtime import RuntimeUnavailable, get_runtime, runtime_kind

from ._errors import DeviceUnavailableError

__all__ = ["Device", "cpu", "devices", "gpu", "placement"]


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


def gpu(index: int = 0) -> Device:
    """GPU ``index``: a real one, or a simulated one under ``DEPENGINE_GPU=sim``.

    Raises :class:`DeviceUnavailableError` naming the reason when there is
    none (no cuda-python, no driver, no device, a driver too old, an index
    past the last device).
    """
    if index.__class__ is not int or index < 0:
        raise ValueError(f"gpu index={index!r} must be an int >= 0")
    try:
        rt = get_runtime()
    except RuntimeUnavailable as exc:
        raise DeviceUnavailableError(f"gpu({index}) is not available: {exc}") from None
    count = rt.device_count()
    if index >= count:
        raise DeviceUnavailableError(f"gpu({index}) does not exist: the {rt.name} runtime has "
                                     f"{count} device(s)")
    return Device("gpu", index)


def devices() -> list[Device]:
    """Every device present: ``cpu()`` and each GPU of the runtime in use (never raises)."""
    try:
        if runtime_kind() == "sim" or _cuda_importable():
            rt = get_runtime()
            return [_CPU] + [Device("gpu", i) for i in range(rt.device_count())]
    except RuntimeUnavailable:
        pass
    return [_CPU]


def _cuda_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("cuda") is not None


def placement(device, kind: str, kinds: tuple) -> tuple:
    """``(device, kind)`` of a push to the per-device engine, checked (``device`` None: the CPU)."""
    if kind not in kinds:
        raise ValueError(f"kind={kind!r} must be one of {', '.join(map(repr, kinds))}")
    if device is None:
        return cpu(), kind
    if not isinstance(device, Device):
        raise TypeError(f"device={device!r} must be de.cpu() or de.gpu(i)")
    return device, kind
