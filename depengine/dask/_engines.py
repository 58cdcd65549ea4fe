"""Which engine a compute runs on.

By default every compute from outside a dask task shares one engine per
worker count, created on first use: kind ``threaded`` (the lowest cost per
op), or ``DEPENGINE_ENGINE`` when set; ``num_workers`` (argument or dask
config) picks the count; without one, the engine's own default
(``DEPENGINE_CPU_WORKERS``, else the usable cores).

A compute started from inside a task must not wait on the engine that runs
that task: with every worker waiting, the inner ops would never run.  Like
``dask.threaded``, which gives every calling thread its own pool, such a
compute gets an engine of its own, one per calling thread and worker count,
kept while that thread lives.  The naive engine runs ops on the pushing
thread, so there a nested compute simply runs inline.

Tasks learn which engine runs them through a context variable set once per
compute in the context every task runs in: no cost per task.
"""

from __future__ import annotations

import contextvars
import os
import threading

import dask

from .. import Engine

__all__ = ["RUNNING_ON", "engine_for", "shutdown"]

# The engine of the compute whose task is running in this context (None outside tasks).
RUNNING_ON: contextvars.ContextVar[Engine | None] = contextvars.ContextVar("depengine_dask_engine",
                                                                          default=None)

_lock = threading.Lock()
_shared: dict[int | None, Engine] = {}  # worker count (None: the engine's default) -> engine
_nested: dict[tuple[threading.Thread, int | None], Engine] = {}


def _kind() -> str:
    return os.environ.get("DEPENGINE_ENGINE") or "threaded"


def _workers(num_workers) -> int | None:
    source = "num_workers"
    if num_workers is None:
        num_workers = dask.config.get("num_workers", None)
        source = "dask config num_workers"
    if num_workers is None:
        return None
    if isinstance(num_workers, bool) or not isinstance(num_workers, int):
        raise TypeError(f"{source}={num_workers!r} must be an int")
    if num_workers < 1:
        raise ValueError(f"{source}={num_workers!r} must be >= 1")
    return num_workers


def engine_for(engine: Engine | None, num_workers) -> Engine:
    """The engine a compute called with ``engine=`` and ``num_workers=`` runs on (checked first)."""
    outer = RUNNING_ON.get()
    if engine is not None:
        if not isinstance(engine, Engine):
            raise TypeError(f"engine={engine!r} must be a depengine Engine or None")
        if engine.closed:
            raise ValueError(f"engine={engine!r} is closed")
        if num_workers is not None and num_workers != engine.options.workers:
            raise ValueError(f"num_workers={num_workers!r} contradicts engine={engine!r}; "
                             "pass one or the other")
        if engine is not outer or engine.type == "naive":
            return engine
        workers = engine.options.workers
    else:
        workers = _workers(num_workers)
        if outer is None or outer.type == "naive":
            return _get_shared(workers)
    return _get_nested(workers)


def _get_shared(workers: int | None) -> Engine:
    eng = _shared.get(workers)
    if eng is None or eng.closed:
        with _lock:
            eng = _shared.get(workers)
            if eng is None or eng.closed:
                eng = _shared[workers] = Engine(_kind(), workers=workers)
    return eng


def _get_nested(workers: int | None) -> Engine:
    me = threading.current_thread()
    eng = _nested.get((me, workers))
    if eng is not None and not eng.closed:
        return eng
    with _lock:
        dead = [k for k in _nested if not k[0].is_alive()]
        gone = [_nested.pop(k) for k in dead]
        eng = _nested[me, workers] = Engine(_kind(), workers=workers)
    for old in gone:  # their threads ended: nothing of theirs can be pending on these
        old.close()
    return eng


def shutdown() -> None:
    """Close every engine this module created (their threads end); later computes make new ones.

    Call it while no compute runs: one still pushing would find its engine closed.
    """
    with _lock:
        engines = list(_shared.values()) + list(_nested.values())
        _shared.clear()
        _nested.clear()
    for eng in engines:
        eng.close()


def _forget_after_fork() -> None:
    # The parent's engines are unusable here (depengine marks them closed) and _lock may be held.
    global _lock
    _lock = threading.Lock()
    _shared.clear()
    _nested.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
