"""Exceptions raised by depengine itself (failures of ops keep their own types)."""

from __future__ import annotations

__all__ = [
    "DeadlockError",
    "DepengineError",
    "DeviceUnavailableError",
    "EngineClosedError",
    "VarDeletedError",
]


class DepengineError(Exception):
    """Base class of the errors depengine raises about its own use."""


class VarDeletedError(DepengineError, ValueError):
    """A var was used after ``Engine.delete_var``."""


class DeadlockError(DepengineError, RuntimeError):
    """A wait that could never return, such as waiting from inside an op."""


class EngineClosedError(DepengineError, RuntimeError):
    """The engine was closed (or belongs to the parent of a forked process)."""


class DeviceUnavailableError(DepengineError, RuntimeError):
    """A device was asked for that this machine cannot provide; the message says why."""
