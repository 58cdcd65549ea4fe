"""Whether the compiled core (the extension ``depengine._core``) can run here, and why not.

The core is built at install where a C compiler is present (``setup.py``,
``optional=True``); without it everything runs on the pure-Python reference
engine, and so it does whenever ``DEPENGINE_PURE_PYTHON=1``
(``_options.resolve_core``).  ``IMPLEMENTATION`` names what ``Engine()`` builds
by default in this process: ``"compiled"`` or ``"python"``.
"""

from __future__ import annotations

import os

__all__ = ["COMPILED_AVAILABLE", "IMPLEMENTATION", "WHY_NOT_COMPILED", "core_module"]


def _load():
    try:
        from . import _core
    except ImportError as exc:
        return None, f"depengine._core is not built: {exc}"
    return _core, None


core_module, WHY_NOT_COMPILED = _load()
COMPILED_AVAILABLE = core_module is not None
_PURE = bool(os.environ.get("DEPENGINE_PURE_PYTHON"))
IMPLEMENTATION = "compiled" if COMPILED_AVAILABLE and not _PURE else "python"
