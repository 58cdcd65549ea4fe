"""The C extension (everything else is in pyproject.toml).

``depengine._speedups``: the profiler's per-op hooks, the op factory and the
var transitions in C.  Optional: where it cannot be compiled the install goes
on, and depengine runs the same functions written in Python
(``depengine._compiled.IMPLEMENTATION`` says which).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("depengine._speedups", ["depengine/_speedups.c", "depengine/_hotpath.c"],
                             depends=["depengine/_speedups.h"], optional=True)])
