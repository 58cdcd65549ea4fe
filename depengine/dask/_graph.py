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

import itertools
from numbers import Real

from ._convert import FUSED, Nested, make
from ._node import ALIAS, CALL, DATA, SPEC, Node

__all__ = ["Plan", "build", "run_subgraph"]

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
    n = make(key, value, dsk, cache)
    if n.fn is FUSED and FUSED is not None:
        n.fn = run_subgraph
    return n


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
    if kind == CALL and refs and refs[0].__class__ is tuple:  # arguments with Nested parts
        by_key = {k: (m.fwd or m) for k, m in zip(depkeys, map(nodes.__getitem__, depkeys), strict=True)}
        n.refs = tuple((i, x.resolve(by_key) if x.__class__ is Nested else by_key[x]) for i, x in refs)
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
