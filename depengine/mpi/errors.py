"""Errors of the mpi engine (failures of ops keep their own types, across ranks too)."""

from __future__ import annotations

from .._errors import DepengineError

__all__ = ["MpiUnavailableError", "ProgramMismatchError", "RankFailedError", "RemoteError",
           "RemoteTraceback", "TransferError"]


class MpiUnavailableError(DepengineError, ImportError):
    """``Engine("mpi")`` without mpi4py or without an MPI library that it can load."""


class TransferError(DepengineError, ValueError):
    """A message from another rank that does not fit the var it claims to carry.

    The message names the var and both ranks; the var's buffer was not
    written.
    """


class RankFailedError(DepengineError, RuntimeError):
    """Another rank died or stopped answering while this rank waited on it."""


class ProgramMismatchError(DepengineError, RuntimeError):
    """The ranks pushed different op sequences (or reached different collective calls)."""


class RemoteError(DepengineError):
    """An op's exception raised on another rank whose type cannot be rebuilt on this one
    (its module is not imported here, or its constructor wants other arguments)."""

    def __init__(self, type_module: str, type_name: str, message: str) -> None:
        super().__init__(f"{type_module}.{type_name}: {message}")
        self.type_module = type_module
        self.type_name = type_name
        self.message = message


class RemoteTraceback(Exception):
    """The ``__cause__`` of a failure received from another rank: the traceback text there."""

    def __init__(self, text: str, rank: int, op: str) -> None:
        super().__init__(text)
        self.text = text
        self.rank = rank
        self.op = op

    def __str__(self) -> str:
        return f"traceback on rank {self.rank} (op {self.op!r}):\n\n{self.text}"
