"""From the value of one key of a dask graph to a :class:`~._node.Node` that runs it.

``make(key, value, dsk, cache)`` recognises every form dask hands a
scheduler: task-spec nodes (``Task``, ``Alias``, ``DataNode`` and the
containers), legacy tuples ``(fn, *args)`` and plain values.  The common
forms are compiled for a cheap call (``Node.call``): a ``Task`` or a legacy
tuple whose arguments are keys or values becomes a function and its
arguments with holes; a legacy argument that holds keys or tasks (a list of
keys, a task inside the task) becomes a :class:`Nested`, computed at call
time like a node.  What only dask's own converter handles faithfully goes
through it (``convert_legacy_task``) and runs as dask runs it.
"""

from __future__ import annotations

import functools
import inspect

from dask import _task_spec
from dask._task_spec import Alias, DataNode, GraphNode, Task, TaskRef, convert_legacy_task

from ._node import ALIAS, CALL, DATA, SPEC, Node

__all__ = ["FUSED", "Nested", "make"]

_KEYLIKE = (str, tuple, int, float)          # what dask treats as a key when the graph has it
# What an argument of a legacy task is, by its exact class (dicts are values: dask does
# not look into them): a scalar that may be a key, a tuple (a key, a task or a tuple of
# parts), a list or set of parts, a plain value, a key or else only for dask's converter
# (namedtuples), only for dask's converter (subclasses of the containers, task-spec nodes).
_SCALAR, _TUPLE, _CONTAINER, _VALUE, _KEY_OR_FOREIGN, _FOREIGN = range(1, 7)
_KINDS: dict[type, int] = {str: _SCALAR, int: _SCALAR, float: _SCALAR, tuple: _TUPLE, list: _CONTAINER,
                           set: _CONTAINER, frozenset: _CONTAINER, dict: _VALUE, type(None): _VALUE}


def _fused_task_function():
    """dask's function of a task of fused tasks, if it is the one ``run_subgraph`` stands in for.

    It is private to dask: with any other signature (older dask releases
    differ) nothing is substituted and dask's own function runs.
    """
    fn = getattr(_task_spec, "_execute_subgraph", None)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    names = [p.name for p in params]
    if names[:3] != ["inner_dsk", "outkey", "inkeys"] or len(params) != 4 or \
            params[3].kind is not inspect.Parameter.VAR_POSITIONAL:
        return None
    return fn


# dask's function of a task of fused tasks, when _graph.run_subgraph can stand in for it
FUSED = _fused_task_function()


class _Known:
    """The keys the graph offers: its own and the cache's (for dask's converter)."""

    __slots__ = ("cache", "dsk")

    def __init__(self, dsk, cache) -> None:
        self.dsk, self.cache = dsk, cache

    def __contains__(self, key) -> bool:
        return key in self.dsk or (self.cache is not None and key in self.cache)


def _is_key(a, dsk, cache) -> bool:
    try:
        return a in dsk or (cache is not None and a in cache)
    except TypeError:  # a tuple holding something unhashable is no key
        return False


def _kind_of(cls) -> int:
    """What an argument of class ``cls`` is to a legacy task (see _KINDS), learnt once per class."""
    if issubclass(cls, (str, int, float)):
        kind = _SCALAR
    elif issubclass(cls, tuple):
        kind = _KEY_OR_FOREIGN  # a namedtuple, say: a key, or dask converts it
    elif issubclass(cls, (list, set, frozenset, GraphNode, TaskRef)):
        kind = _FOREIGN
    else:
        kind = _VALUE
    _KINDS[cls] = kind
    return kind


def _legacy_call(n: Node, task: tuple, dsk, cache) -> bool:
    """Fill ``n`` from a legacy ``(fn, *args)``.

    Arguments that are keys become refs and anything else a value, in one
    quick pass; from the first list, set or tuple that is no key, or task
    inside the task, on, :func:`_legacy_nested` takes over (dicts are
    values: dask does not look into them).  Returns False (``n`` untouched)
    for what only dask converts faithfully.
    """
    refs = []
    holes = []
    kinds = _KINDS
    i = 0
    args = task[1:]
    for a in args:
        kind = kinds.get(a.__class__) or _kind_of(a.__class__)
        if kind == _SCALAR:
            if _is_key(a, dsk, cache):
                refs.append(a)
                holes.append(i)
        elif kind == _TUPLE:
            if (a and callable(a[0])) or not _is_key(a, dsk, cache):  # a task, or a tuple of values
                return _legacy_nested(n, task, dsk, cache, i, refs, holes)
            refs.append(a)
            holes.append(i)
        elif kind != _VALUE:
            return _legacy_nested(n, task, dsk, cache, i, refs, holes)
        i += 1
    n.kind = CALL
    n.fn = task[0]
    n.depkeys = tuple(refs)
    if len(holes) < i:
        n.args = args
        n.refs = tuple(holes)  # positions for now; (position, node) once resolved
    return True


def _legacy_nested(n: Node, task: tuple, dsk, cache, start: int, keys: list, positions: list) -> bool:
    """``_legacy_call`` from argument ``start`` on, its quick pass having found ``keys`` at
    ``positions`` before it: arguments that hold keys or tasks become :class:`Nested`."""
    parts = list(task[1:])
    holes = list(zip(positions, keys, strict=True))
    try:
        for i in range(start, len(parts)):
            _part(parts, i, holes, dsk, cache, keys)
    except _Unsupported:
        return False
    n.kind = CALL
    n.fn = task[0]
    n.depkeys = tuple(dict.fromkeys(keys))
    n.args = tuple(parts)
    n.refs = tuple(holes)  # (position, key or Nested): resolved in _finish
    return True


class _Unsupported(Exception):
    """A legacy argument only dask's own converter handles."""


class Nested:
    """An argument made at call time from values of keys: a list, tuple or set that holds
    keys or tasks, or a task inside a task (legacy graphs).  Its ``value`` is computed like a node's."""

    __slots__ = ("build", "holes", "parts")

    def __init__(self, build, parts: list, holes: list) -> None:
        self.build = build  # parts -> value
        self.parts = parts  # literal parts, with holes
        self.holes = holes  # (position, key or Nested); (position, node or Nested) once resolved

    @property
    def value(self):
        parts = list(self.parts)
        for i, d in self.holes:
            parts[i] = d.value
        return self.build(parts)

    def resolve(self, by_key: dict) -> Nested:
        self.holes = [(i, x.resolve(by_key) if x.__class__ is Nested else by_key[x]) for i, x in self.holes]
        return self

    def nodes(self):
        for _, x in self.holes:
            yield from (x.nodes() if x.__class__ is Nested else (x,))


def _apply(fn, parts):
    return fn(*parts)


def _nested(build, items, dsk, cache, keys: list, always: bool = False):
    """``items`` as the parts of an argument: a Nested if some part is a key or needs a call
    (or ``always``), else ``items`` itself, a value.  Keys found are appended to ``keys``."""
    parts = list(items)
    holes: list = []
    for i in range(len(parts)):
        _part(parts, i, holes, dsk, cache, keys)
    if holes or always:
        return Nested(build, parts, holes)
    return items


def _part(parts: list, i: int, holes: list, dsk, cache, keys: list) -> None:
    """Look at ``parts[i]``: a key or a Nested goes to ``holes`` (and keys to ``keys``)."""
    a = parts[i]
    kind = _KINDS.get(a.__class__) or _kind_of(a.__class__)
    if kind == _VALUE:
        return
    if kind == _TUPLE and a and callable(a[0]):  # a task inside the task
        holes.append((i, _nested(functools.partial(_apply, a[0]), a[1:], dsk, cache, keys, True)))
    elif kind != _CONTAINER and kind != _FOREIGN and _is_key(a, dsk, cache):
        keys.append(a)
        holes.append((i, a))
    elif kind in (_TUPLE, _CONTAINER):
        sub = _nested(a.__class__, a, dsk, cache, keys)
        if sub.__class__ is Nested:
            holes.append((i, sub))
    elif kind != _SCALAR:  # no key, and only dask knows how to rebuild it
        raise _Unsupported


def _task_call(n: Node, task: Task) -> bool:
    """Fill ``n`` from a task-spec ``Task`` whose arguments are refs or plain values."""
    refs = []
    holes = []
    args = task.args
    i = 0
    for a in args:
        cls = a.__class__
        if cls is Alias:
            refs.append(a.target)
            holes.append(i)
        elif cls is TaskRef:
            refs.append(a.key)
            holes.append(i)
        elif cls is DataNode:
            if args is task.args:
                args = list(args)
            args[i] = a.value
        elif isinstance(a, (GraphNode, TaskRef)):
            return False
        i += 1
    kwargs = task.kwargs or None
    if kwargs is not None and any(isinstance(v, (GraphNode, TaskRef)) for v in kwargs.values()):
        return False
    n.kind = CALL
    fn = task.func
    n.fn = fn
    n.kwargs = kwargs
    n.depkeys = tuple(refs)
    if len(holes) < i:
        n.args = tuple(args)
        n.refs = tuple(holes)
    return True


def make(key, value, dsk, cache) -> Node:
    """The node of ``key`` whose graph value is ``value``."""
    cls = value.__class__
    if cls is tuple and value and callable(value[0]):
        n = Node(key, CALL)
        if _legacy_call(n, value, dsk, cache):
            return n
        value = convert_legacy_task(key, value, _Known(dsk, cache))
        cls = value.__class__
    if cls is Task:
        n = Node(key, CALL)
        if _task_call(n, value):
            return n
    if isinstance(value, GraphNode):
        if cls is DataNode:
            n = Node(key, DATA)
            n.value = value.value
            return n
        if cls is Alias:
            return _alias(key, value.target)
        n = Node(key, SPEC, tuple(value.dependencies))
        n.spec = value
        return n
    if isinstance(value, _KEYLIKE) and _is_key(value, dsk, cache):
        return _alias(key, value)
    if isinstance(value, (list, tuple, set, frozenset)):  # may hold keys or tasks: dask decides
        converted = convert_legacy_task(key, value, _Known(dsk, cache))
        if isinstance(converted, GraphNode):
            return make(key, converted, dsk, cache)
        value = converted
    n = Node(key, DATA)
    n.value = value
    return n


def _alias(key, target) -> Node:
    if target == key:
        raise ValueError(f"Cycle detected in the dask graph: {key!r} -> {key!r} (a key that names itself)")
    return Node(key, ALIAS, (target,))
