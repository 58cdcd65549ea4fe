"""From a dask graph to the ordered nodes depengine pushes; every check happens here.

``build(dsk, keys, cache, priorities)`` walks the graph from the requested
keys only (unreachable keys cost nothing), depth first and without recursion,
and returns a :class:`Plan`: the task nodes in the order they are pushed.
Any bad input raises here, before the first op is pushed: ``KeyError`` for a
requested key the graph lacks, ``ValueError`` for a missing dependency or a
cycle, ``TypeError`` for a priority that is not a number.

Order.  dask's local scheduler pays ``dask.order`` (about 20 µs a task) for
three things: depth first, so that results are released early; a critical
path first; ties broken the same way every time.  The walk here gives them
for a fraction of that: the post-order of a depth-first walk from the
outputs is the push order and ranks the tasks (``_compute._push`` turns
ranks into engine priorities), so a worker takes the ready task that
finishes the oldest started branch, like dask's LIFO stack.  When siblings
differ in height (the longest chain of tasks below them) a second walk
visits the tallest first, which starts the critical path first; graphs
whose siblings are even (arrays, bags, reductions) skip it.
``dask.annotate(priority=p)`` ranks above that: a higher ``p`` runs first,
and a task's dependencies inherit the highest priority of the tasks that
need them, so a prioritised result is not held up by unprioritised inputs.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from numbers import Real

from dask import _task_spec
from dask._task_spec import Alias, DataNode, GraphNode, Task, TaskRef, convert_legacy_task

from ._node import ALIAS, CALL, DATA, SPEC, Node

__all__ = ["Plan", "build", "run_subgraph"]

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


_SUBGRAPH = _fused_task_function()
_OPEN, _DONE = 1, 2  # Node.mark; 0: not walked yet


class Plan:
    """What ``build`` found: every node reached, the task nodes in push order."""

    __slots__ = ("nodes", "outputs", "tasks")

    def __init__(self, nodes: dict, tasks: list, outputs: list) -> None:
        self.nodes = nodes      # key -> Node, every key reached from the outputs
        self.tasks = tasks      # task nodes, dependencies first; index = rank in the order
        self.outputs = outputs  # distinct task nodes whose value was requested

    def value(self, key):
        n = self.nodes[key]
        return (n.fwd or n).value


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
    ``positions`` before it: arguments that hold keys or tasks become :class:`_Nested`."""
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
    n.refs = tuple(holes)  # (position, key or _Nested): resolved in _finish
    return True


class _Unsupported(Exception):
    """A legacy argument only dask's own converter handles."""


class _Nested:
    """An argument made at call time from values of keys: a list, tuple or set that holds
    keys or tasks, or a task inside a task (legacy graphs).  Its ``value`` is computed like a node's."""

    __slots__ = ("build", "holes", "parts")

    def __init__(self, build, parts: list, holes: list) -> None:
        self.build = build  # parts -> value
        self.parts = parts  # literal parts, with holes
        self.holes = holes  # (position, key or _Nested); (position, node or _Nested) once resolved

    @property
    def value(self):
        parts = list(self.parts)
        for i, d in self.holes:
            parts[i] = d.value
        return self.build(parts)

    def resolve(self, by_key: dict) -> _Nested:
        self.holes = [(i, x.resolve(by_key) if x.__class__ is _Nested else by_key[x]) for i, x in self.holes]
        return self

    def nodes(self):
        for _, x in self.holes:
            yield from (x.nodes() if x.__class__ is _Nested else (x,))


def _apply(fn, parts):
    return fn(*parts)


def _nested(build, items, dsk, cache, keys: list, always: bool = False):
    """``items`` as the parts of an argument: a _Nested if some part is a key or needs a call
    (or ``always``), else ``items`` itself, a value.  Keys found are appended to ``keys``."""
    parts = list(items)
    holes: list = []
    for i in range(len(parts)):
        _part(parts, i, holes, dsk, cache, keys)
    if holes or always:
        return _Nested(build, parts, holes)
    return items


def _part(parts: list, i: int, holes: list, dsk, cache, keys: list) -> None:
    """Look at ``parts[i]``: a key or a _Nested goes to ``holes`` (and keys to ``keys``)."""
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
        if sub.__class__ is _Nested:
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
    n.fn = run_subgraph if fn is _SUBGRAPH else fn
    n.kwargs = kwargs
    n.depkeys = tuple(refs)
    if len(holes) < i:
        n.args = tuple(args)
        n.refs = tuple(holes)
    return True


def run_subgraph(inner: dict, outkey, inkeys, *values):
    """What dask's ``_execute_subgraph`` (a task of fused tasks) returns, computed without
    running ``dask.order`` on the little graph at every call (most of its cost)."""
    given = dict(zip(inkeys, values, strict=True))
    if not inner.keys().isdisjoint(given):  # the inputs take precedence, as in dask
        inner = {k: v for k, v in inner.items() if k not in given}
    plan = build(inner, [outkey], given)
    for n in plan.tasks:
        n.store(n.call())
    return plan.value(outkey)


def _make(key, value, dsk, cache) -> Node:
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
            return _make(key, converted, dsk, cache)
        value = converted
    n = Node(key, DATA)
    n.value = value
    return n


def _alias(key, target) -> Node:
    if target == key:
        raise ValueError(f"Cycle detected in the dask graph: {key!r} -> {key!r} (a key that names itself)")
    return Node(key, ALIAS, (target,))


def _lookup(key, dsk, cache, reader: Node | None) -> Node:
    try:
        value = dsk[key]
    except KeyError:
        if cache is None or key not in cache:
            if reader is None:
                raise KeyError(key) from None
            raise ValueError(f"Missing dependency {key!r} of task {reader.key!r}: it is neither a key "
                             "of the graph nor in the cache") from None
        n = Node(key, DATA)
        n.value = cache[key]
        return n
    except TypeError:  # an unhashable key
        if reader is None:
            raise KeyError(key) from None
        raise
    return _make(key, value, dsk, cache)


def _finish(n: Node, nodes: dict, tasks: list) -> bool:
    """Resolve ``n``'s dependencies to nodes (aliases followed); True if its task deps differ in height."""
    n.mark = _DONE
    kind = n.kind
    if kind < CALL:
        if kind == ALIAS:
            t = nodes[n.depkeys[0]]
            n.fwd = t = t.fwd or t
            n.height = t.height
        return False
    tasks.append(n)
    depkeys = n.depkeys
    if not depkeys:
        n.height = 1
        return False
    refs = n.refs
    if kind == CALL and refs and refs[0].__class__ is tuple:  # arguments with _Nested parts
        by_key = {k: (m.fwd or m) for k, m in zip(depkeys, map(nodes.__getitem__, depkeys), strict=True)}
        n.refs = tuple((i, x.resolve(by_key) if x.__class__ is _Nested else by_key[x]) for i, x in refs)
        return _count_reads(n, dict.fromkeys(by_key.values()))
    if len(depkeys) == 1:  # most tasks: a chain link, an elementwise step
        d = nodes[depkeys[0]]
        d = d.fwd or d
        n.refs = (d,) if kind == SPEC or n.args is None else ((n.refs[0], d),)
        if d.kind >= CALL:
            if not d.readers:
                d.left = itertools.count()
            d.readers += 1
            n.deps = (d,)
            n.height = d.height + 1
        else:
            n.height = 1
        return False
    resolved = [m.fwd or m for m in map(nodes.__getitem__, depkeys)]
    n.refs = tuple(resolved) if kind == SPEC or n.args is None else tuple(zip(refs, resolved, strict=True))
    return _count_reads(n, dict.fromkeys(resolved))


def _count_reads(n: Node, inputs) -> bool:
    """Set ``n``'s task deps and height from its distinct input nodes; True if their heights differ."""
    uneven = False
    height = 0
    deps = []
    for d in inputs:
        if d.kind >= CALL:
            deps.append(d)
            if not d.readers:
                d.left = itertools.count()
            d.readers += 1
            h = d.height
            if h != height:
                if height:
                    uneven = True
                if h > height:
                    height = h
    n.height = height + 1
    n.deps = tuple(deps)
    return uneven


def _walk(roots: list, nodes: dict, dsk, cache) -> tuple[list, bool]:
    """First walk: build every node reachable from ``roots``; post-order of task nodes."""
    tasks: list[Node] = []
    uneven = False
    get = nodes.get
    for root in roots:
        if root.mark:
            continue
        root.mark = _OPEN
        stack = [root]
        while stack:
            n = stack[-1]
            depkeys = n.depkeys
            i = n.at
            while i < len(depkeys):
                k = depkeys[i]
                i += 1
                m = get(k)
                if m is None:
                    m = nodes[k] = _lookup(k, dsk, cache, n)
                if not m.mark:
                    n.at = i
                    m.mark = _OPEN
                    stack.append(m)
                    break
                if m.mark == _OPEN:
                    cycle = [s.key for s in stack[next(j for j, s in enumerate(stack) if s is m):]]
                    path = " -> ".join(repr(k) for k in [*cycle, m.key])
                    raise ValueError(f"Cycle detected in the dask graph: {path}")
            else:
                stack.pop()
                if _finish(n, nodes, tasks):
                    uneven = True
    return tasks, uneven


def _tallest_first(roots: list, count: int) -> list:
    """Second walk, siblings tallest first: the post-order of task nodes (same nodes, new order)."""
    by_height = _height_desc
    tasks: list[Node] = []
    seen = _DONE + 1
    for root in sorted({r for r in (r.fwd or r for r in roots) if r.kind >= CALL}, key=by_height):
        if root.mark == seen:
            continue
        root.mark = seen
        stack = [(root, iter(sorted(root.deps, key=by_height)))]
        while stack:
            n, it = stack[-1]
            for d in it:
                if d.mark != seen:
                    d.mark = seen
                    stack.append((d, iter(sorted(d.deps, key=by_height))))
                    break
            else:
                stack.pop()
                tasks.append(n)
    if len(tasks) != count:  # pragma: no cover - the first walk reached exactly these
        raise AssertionError("depengine.dask: the two walks of the graph disagree")
    return tasks


def _height_desc(n: Node) -> int:
    return -n.height


def _apply_priorities(tasks: list, nodes: dict, priorities: dict) -> None:
    """Priorities annotated on keys: checked, then inherited by dependencies (highest wins)."""
    for key, p in priorities.items():
        n = nodes.get(key)
        if n is None:
            continue
        if isinstance(p, bool) or not isinstance(p, Real):
            raise TypeError(f"priority annotation {p!r} of key {key!r} must be a number")
        n = n.fwd or n
        if n.prio is None or p > n.prio:
            n.prio = p
    for n in reversed(tasks):  # dependents come after their dependencies
        p = n.prio
        if p is None:
            p = n.prio = 0
        for d in n.deps:
            if d.prio is None or p > d.prio:
                d.prio = p


def build(dsk, keys: list, cache=None, priorities: dict | None = None) -> Plan:
    """Walk ``dsk`` from ``keys`` (flat, in request order) and order its tasks; see the module doc."""
    nodes: dict = {}
    roots = []
    for key in keys:
        n = nodes.get(key)
        if n is None:
            n = nodes[key] = _lookup(key, dsk, cache, None)
        roots.append(n)
    tasks, uneven = _walk(roots, nodes, dsk, cache)
    outputs = []
    for n in roots:
        n = n.fwd or n
        if n.kind >= CALL and not n.out:
            outputs.append(n)
        n.out = True
    if uneven or len({(r.fwd or r).height for r in roots}) > 1:
        tasks = _tallest_first(roots, len(tasks))
    if priorities:
        _apply_priorities(tasks, nodes, priorities)
    return Plan(nodes, tasks, outputs)
