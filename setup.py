"""The one C extension: the profiler's per-op hooks (everything else is in pyproject.toml).

Optional: where it cannot be compiled the install goes on, and depengine uses
the same hooks written in Python (``depengine.profiler.IMPLEMENTATION``).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("depengine._speedups", ["depengine/_speedups.c"], optional=True)])
