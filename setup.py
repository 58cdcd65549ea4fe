"""The C extensions (everything else is in pyproject.toml).

``depengine._core``: the compiled engine core (``depengine/_core.h`` says what
each file holds).  ``ops._native``: the call of a CPU kernel without the GIL,
the free lists of ``ops.memory``'s buffer pool and the front end's
common op (``ops/_front.c``).
Both optional: where they cannot be compiled the install goes on, every
engine runs on the pure-Python reference (``depengine._compiled.WHY_NOT_COMPILED``
says why) and kernels are called through ctypes (``ops._kernels.CALLS``).
"""

from setuptools import Extension, setup

SOURCES = ["_core_module.c", "_core_var.c", "_core_op.c", "_core_native.c", "_core_engine.c", "_core_queue.c",
           "_core_pool.c", "_core_plan.c", "_core_records.c", "_core_mpi.c",
           "_core_mpi_push.c", "_core_lane.c"]
HEADERS = ["_core.h", "_core_transitions.c.h", "_core_push.c.h", "_core_waits.c.h"]
OPS_SOURCES = ["_native.c", "_pool.c", "_front.c", "_front_op.c"]

setup(ext_modules=[Extension("depengine._core", [f"depengine/{s}" for s in SOURCES],
                             depends=[f"depengine/{h}" for h in HEADERS], optional=True),
                   Extension("ops._native", [f"ops/{s}" for s in OPS_SOURCES], depends=["ops/_front.h"],
                             optional=True)])
