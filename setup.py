"""The C extensions (everything else is in pyproject.toml).

``depengine._speedups``: the profiler's per-op hooks, the op factory and the
var transitions in C.  ``ops._native``: the call of a CPU kernel without the
GIL.  Both optional: where they cannot be compiled the install goes on, and
the same functions run in Python (``depengine._compiled.IMPLEMENTATION`` and
``ops._kernels.CALLS`` say which).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("depengine._speedups", ["depengine/_speedups.c", "depengine/_hotpath.c"],
                             depends=["depengine/_speedups.h"], optional=True),
                   Extension("ops._native", ["ops/_native.c"], optional=True)])
