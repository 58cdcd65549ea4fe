"""The process-wide default engine."""

from __future__ import annotations

import os
import threading

from ._engine import Engine

__all__ = ["default_engine"]

_default: Engine | None = None
_lock = threading.Lock()


def default_engine() -> Engine:
    """The process-wide engine (kind from ``DEPENGINE_ENGINE``), created on first use.

    It is closed at interpreter exit, and a forked child gets a fresh one.
    If it was closed explicitly, the next call creates a new one.
    """
    global _default
    engine = _default
    if engine is None or engine.closed:
        with _lock:
            engine = _default
            if engine is None or engine.closed:
                engine = _default = Engine()
    return engine


def _reset_after_fork() -> None:
    global _default, _lock
    _default = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)
