"""depengine as a dask scheduler: any dask collection runs on a depengine engine.

    import depengine.dask                      # registers the scheduler name "depengine"
    x.compute(scheduler=depengine.dask.get)    # or scheduler="depengine", or dask.config

:func:`get` takes every graph form dask hands a scheduler (plain dicts with
legacy tuples, HighLevelGraphs, task-spec nodes, the expression objects of
``dask.compute``), returns results shaped like dask's, raises a task's
exception as it was raised, calls dask's callbacks with dask.local's state
(so ``ProgressBar``, ``Profiler``, ``ResourceProfiler`` and ``CacheProfiler``
work), honours ``num_workers``, ``cache`` and ``rerun_exceptions_locally``
(arguments or dask config) and ``dask.annotate(priority=...)``.  Each task is
one engine op, named by its key while a depengine profile records, so
``depengine viz`` draws a dask computation.

dask stays optional: ``import depengine`` never imports it; this module does.
"""

from __future__ import annotations

import contextvars
import gc
import warnings
from collections.abc import Mapping, MutableMapping

import dask
import dask.base
from dask._task_spec import DataNode, GraphNode, convert_legacy_task
from dask.callbacks import Callback, local_callbacks, normalize_callback, unpack_callbacks
from dask.utils import ensure_dict

from ._compute import Compute
from ._engines import RUNNING_ON, engine_for, shutdown
from ._graph import build

__all__ = ["SCHEDULER_NAME", "get", "register", "shutdown"]

SCHEDULER_NAME = "depengine"

# Keywords dask's local schedulers take that mean nothing here (they configure an executor).
_EXECUTOR_KEYWORDS = frozenset({"pool", "chunksize", "get_id", "pack_exception", "raise_exception",
                                "dumps", "loads"})


def get(dsk, keys, cache=None, num_workers=None, *, engine=None, callbacks=None,
        rerun_exceptions_locally=None, **kwargs):
    """Compute ``keys`` of the dask graph ``dsk`` on a depengine engine.

    ``keys`` is a key or a nested list of keys; a list gives a tuple (nested
    lists, nested tuples).  ``num_workers`` (default: dask config, else the
    engine's default) picks a shared engine of that many workers;
    ``engine=`` runs on your own engine instead.  ``cache``: a mutable
    mapping that supplies keys missing from the graph and receives every
    value while it is live (requested ones stay).  ``callbacks``: dask
    callbacks (tuples or ``Callback`` objects) used instead of the active
    ones.  ``rerun_exceptions_locally``: rerun a failed task in the calling
    thread before raising, for a debugger.  The keywords dask.threaded takes
    for its executor (``pool``, ``chunksize``, ...) are accepted and ignored.

    Raises ``KeyError`` for a requested key the graph lacks, ``ValueError``
    for a missing dependency or a cycle, both before any task runs.
    """
    unknown = sorted(set(kwargs) - _EXECUTOR_KEYWORDS, key=str)
    if unknown:
        raise TypeError(f"depengine.dask.get() got unexpected keyword argument(s): {', '.join(unknown)}")
    graph, priorities = _graph_of(dsk)
    flat = _flatten(keys)
    if cache is None:
        cache = dask.config.get("cache", None)
    if cache is not None and not isinstance(cache, MutableMapping) and not all(
            hasattr(cache, m) for m in ("keys", "__getitem__", "__setitem__", "__delitem__")):
        raise TypeError(f"cache={cache!r} must be a mutable mapping (a dict, for example)")
    if rerun_exceptions_locally is None:
        rerun_exceptions_locally = dask.config.get("rerun_exceptions_locally", False)
    eng = engine_for(engine, num_workers)
    context = contextvars.copy_context()  # tasks see the caller's context variables
    context.run(RUNNING_ON.set, eng)
    if isinstance(callbacks, (Callback, tuple)):
        callbacks = [callbacks]
    if callbacks is not None:
        callbacks = [normalize_callback(cb) for cb in callbacks]
    with local_callbacks(callbacks) as active:
        _, start_state, pretask, posttask, _ = unpack_callbacks(active)
        started = []
        state: dict = {}
        compute = None
        ok = False
        gc_pause = _GcPause()
        try:
            if active:  # callbacks see the graph as dask.local shows it: task-spec nodes
                graph = _converted(graph, cache)
            for cb in active:
                if cb[0]:
                    cb[0](graph)
                started.append(cb)
            plan = build(graph, flat, cache, priorities)
            compute = Compute(plan, context)
            observed = bool(start_state or pretask or posttask) or cache is not None
            if observed:
                state = compute.observe(plan, graph, {} if cache is None else cache, pretask, posttask)
            for f in start_state:
                f(graph, state)
            compute.start(eng, plan, observed, bool(priorities))
            compute.wait(rerun_exceptions_locally, gc_pause.resume)
            results = _results(keys, plan)
            ok = True
        except BaseException:
            if compute is not None:  # Ctrl-C or an error here: no task starts or calls back now
                compute.abandon()
            raise
        finally:
            for cb in started:
                if cb[4]:
                    cb[4](graph, state, not ok)
            compute = plan = None  # gone before the collector is back
            gc_pause.resume()
    return results


def register() -> None:
    """Make ``scheduler="depengine"`` name :func:`get` (done on import).

    dask has no public registry of scheduler names; this adds to the table
    ``dask.base.get_scheduler`` reads, and raises ``RuntimeError`` saying so
    if this dask release lacks it.
    """
    table = getattr(dask.base, "named_schedulers", None)
    if not isinstance(table, dict):
        raise RuntimeError(
            f"dask {dask.__version__} has no dask.base.named_schedulers table, so the scheduler name "
            f"{SCHEDULER_NAME!r} cannot be registered; pass scheduler=depengine.dask.get instead")
    table[SCHEDULER_NAME] = get


class _GcPause:
    """The cyclic garbage collector, paused from the walk of the graph until the compute is over.

    A compute makes several tracked objects per task (nodes, ops, vars) and
    keeps them all until it returns; each collection meanwhile would walk
    every one of them again, for nothing (measured: 30% of the cost of a
    small task).  Reference counting still frees everything.  So that
    garbage cycles made by long tasks are still collected, the collector
    resumes once the caller has waited ``Compute.GC_GRACE`` seconds.
    """

    __slots__ = ("was_on",)

    def __init__(self) -> None:
        self.was_on = gc.isenabled()
        gc.disable()

    def resume(self) -> None:
        if self.was_on:
            self.was_on = False
            gc.enable()


def _graph_of(dsk) -> tuple[Mapping, dict | None]:
    """The graph mapping and the priority annotations of whatever dask handed us."""
    priorities = None
    if not isinstance(dsk, Mapping):
        to_graph = getattr(dsk, "__dask_graph__", None)
        if to_graph is None:
            raise TypeError(f"dsk={type(dsk).__name__!r} is not a dask graph: expected a Mapping or an "
                            "object with __dask_graph__()")
        annotations = getattr(dsk, "__dask_annotations__", None)
        if annotations is not None:
            priorities = (annotations() or {}).get("priority")
        dsk = to_graph()
    layers = getattr(dsk, "layers", None)
    if isinstance(layers, Mapping):  # a HighLevelGraph: annotations live on its layers
        found = _layer_priorities(layers)
        if found:
            priorities = {**(priorities or {}), **found}
        dsk = ensure_dict(dsk)
    return dsk, priorities


def _layer_priorities(layers: Mapping) -> dict:
    found = {}
    for layer in layers.values():
        value = (getattr(layer, "annotations", None) or {}).get("priority")
        if value is None:
            continue
        for key in layer:
            p = value(key) if callable(value) else value
            if type(p).__name__ != "_AnnotationsTombstone":
                found[key] = p
    return found


def _converted(graph: Mapping, cache) -> dict:
    """The graph in task-spec nodes, as dask.local shows it to callbacks (every key kept)."""
    keys = set(graph) if cache is None else set(graph) | set(cache)
    out = {}
    for k, v in graph.items():
        v = convert_legacy_task(k, v, keys)
        out[k] = v if isinstance(v, GraphNode) else DataNode(k, v)
    return out


def _flatten(keys) -> list:
    """The keys of a key or nested lists of keys, in order (lists only; tuples are keys)."""
    if not isinstance(keys, list):
        return [keys]
    flat, stack = [], [iter(keys)]
    while stack:
        for k in stack[-1]:
            if isinstance(k, list):
                stack.append(iter(k))
                break
            flat.append(k)
        else:
            stack.pop()
    return flat


def _results(keys, plan):
    if isinstance(keys, list):
        return tuple(_results(k, plan) for k in keys)
    return plan.value(keys)


try:
    register()
except RuntimeError as _exc:  # importable anyway: scheduler=depengine.dask.get still works
    warnings.warn(str(_exc), RuntimeWarning, stacklevel=2)
