"""depengine: a dependency-scheduled execution engine.

Push operations with the vars they read and write; the engine infers every
dependency and runs each op as soon as it may, in parallel where it can.
"""

from .default import default_engine
from .device import Device, cpu, devices, gpu
from .engine import Engine
from .errors import (
    DeadlockError,
    DepengineError,
    DeviceUnavailableError,
    EngineClosedError,
    VarDeletedError,
)
from .op import Op, RunContext
from .profiler import profile
from .trace import Trace, TraceError
from .var import Var

__version__ = "0.1.0"

__all__ = [
    "DeadlockError",
    "DepengineError",
    "Device",
    "DeviceUnavailableError",
    "Engine",
    "EngineClosedError",
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
    "profile",
]
