"""Which implementation runs the hot path: the C extension when it is built, else Python.

``depengine._speedups`` (``_speedups.c`` and ``_hotpath.c``) holds C versions
of the op factory (``_op.new_op``), the four var transitions (``_var.py``) and
the profiler's per-op hooks.  The Python versions are the reference: they run
where nothing could compile the extension, and whenever
``DEPENGINE_PURE_PYTHON=1``.  ``IMPLEMENTATION`` says which one this process
runs ("C" or "Python"); the engine binds these names when it is imported.
"""

from __future__ import annotations

import os

from . import _op, _var

__all__ = ["IMPLEMENTATION", "append_read", "append_write", "complete_read", "complete_write", "new_op",
           "speedups"]


def _load():
    """The bound extension module, or None when it is missing, refused or of another layout."""
    try:
        from . import _speedups
    except ImportError:
        return None
    try:
        _speedups.bind(_op.Op, _var.Var)  # learns the slots' offsets; fails if a class lost a field
    except TypeError:
        return None
    return _speedups


# The extension, bound to Op and Var (None when not built).  The profiler
# offers its hooks even under DEPENGINE_PURE_PYTHON, for tests that compare.
speedups = _load()
_use_c = speedups is not None and not os.environ.get("DEPENGINE_PURE_PYTHON")
IMPLEMENTATION = "C" if _use_c else "Python"
_impl = speedups if _use_c else None

new_op = _impl.new_op if _impl else _op.new_op
append_read = _impl.append_read if _impl else _var.append_read
append_write = _impl.append_write if _impl else _var.append_write
complete_read = _impl.complete_read if _impl else _var.complete_read
complete_write = _impl.complete_write if _impl else _var.complete_write
