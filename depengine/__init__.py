"""depengine: a dependency-scheduled execution engine.

Push operations with the vars they read and write; the engine infers every
dependency and runs each op as soon as it may, in parallel where it can.

The public names are those of ``__all__``: the classes and functions below
and three public submodules, ``plan`` (recorded graphs and plans),
``profiler`` and ``trace``.  Every other module is private (its name starts
with an underscore), except the optional subpackages that need a third-party
package and are imported by name: ``depengine.dask`` (dask) and
``depengine.mpi`` (mpi4py).  They are left out of ``__all__`` and ``dir()``
so that ``from depengine import *`` never imports them.
"""

from . import plan, profiler, trace
from ._default import default_engine
from ._device import Device, cpu, devices, gpu
from ._engine import Engine
from ._errors import (
    DeadlockError,
    DepengineError,
    DeviceUnavailableError,
    EngineClosedError,
    VarDeletedError,
)
from ._native import NativeError, native
from ._op import Op, RunContext
from ._var import Var
from .profiler import profile
from .trace import Trace, TraceError

__version__ = "0.1.0"

__all__ = [
    "DeadlockError",
    "DepengineError",
    "Device",
    "DeviceUnavailableError",
    "Engine",
    "EngineClosedError",
    "NativeError",
    "Op",
    "RunContext",
    "Trace",
    "TraceError",
    "Var",
    "VarDeletedError",
    "cpu",
    "default_engine",
    "devices",
    "gpu",
    "native",
    "plan",
    "profile",
    "profiler",
    "trace",
]

_OPTIONAL = ("dask", "mpi")


def __dir__() -> list[str]:
    return sorted(n for n in globals() if n not in _OPTIONAL)
