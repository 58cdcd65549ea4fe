"""Scale-out over MPI: ``de.Engine("mpi")`` runs the same program on every rank.

Importing this package does not import mpi4py; building an engine does.
See :mod:`depengine.mpi.engine` for the model.
"""

from .engine import MpiEngine, RemoteOp
from .errors import (
    MpiUnavailableError,
    ProgramMismatchError,
    RankFailedError,
    RemoteError,
    RemoteTraceback,
    TransferError,
)

__all__ = [
    "MpiEngine",
    "MpiUnavailableError",
    "ProgramMismatchError",
    "RankFailedError",
    "RemoteError",
    "RemoteOp",
    "RemoteTraceback",
    "TransferError",
]
