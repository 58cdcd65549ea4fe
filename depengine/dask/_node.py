"""One key of a dask graph as depengine runs it: how its value is computed, what it holds.

A :class:`Node` is built once per key a compute needs (``_convert.py`` reads
the graph's value of the key, ``_graph.py`` links and orders the nodes).
Task nodes become engine ops whose function is :meth:`Node.run` (nobody
watches) or :meth:`Node.run_observed` (dask callbacks or a ``cache`` mapping
want to see every step).  The value lives on the node itself, not in a
key-to-value dict: a slot read costs less than hashing a tuple key, and a node
drops its value (``value = None``) as soon as the last task that reads it has
run, unless the value was requested.

Forms of a task, fastest first (``kind``):

- ``CALL`` with ``args is None``: ``fn(*values of refs, **kwargs)``;
- ``CALL`` with a template: ``args`` holds the literal arguments, ``refs`` the
  ``(position, node)`` pairs filled in at run time (a legacy argument that
  holds keys or tasks is a ``_convert.Nested`` in place of the node: it has
  a ``value`` too, computed when read);
- ``SPEC``: any other dask task-spec node, called as dask calls it,
  ``spec({key: value of each dependency})``.

``DATA`` nodes hold a value from the start; ``ALIAS`` nodes are resolved away
before anything runs (whoever reads an alias reads its target).
"""

from __future__ import annotations

from threading import get_ident

__all__ = ["ALIAS", "CALL", "DATA", "SPEC", "Node"]

DATA, ALIAS, CALL, SPEC = range(4)


class Node:
    """A key of the graph: its task (or value), its dependencies, its result."""

    __slots__ = (
        "args",        # CALL: literal arguments with holes, or None when every argument is a ref
        "at",          # DFS cursor into depkeys while the graph is walked
        "c",           # the Compute running this node
        "deps",        # distinct task nodes this task reads (data nodes excluded)
        "depkeys",     # keys this node depends on, as the graph names them
        "fn",          # CALL: the function
        "fwd",         # ALIAS: the node it resolves to (never an alias); None for any other node
        "height",      # longest chain of tasks ending here (1 for a task without task deps)
        "key",
        "kind",
        "kwargs",      # CALL: literal keyword arguments or None
        "left",        # itertools.count drawn once by each reader that ran: readers - 1 means the last
        "mark",        # 0 new, 1 on the DFS stack, 2 finished (2 + k in later walks)
        "out",         # True when the value was requested: never released
        "prio",        # priority annotation, propagated to dependencies (None: none)
        "readers",     # number of distinct tasks that read this node
        "refs",        # CALL: nodes (args None) or (position, node); SPEC: nodes parallel to depkeys
        "spec",        # SPEC: the dask GraphNode
        "value",
        "var",         # the engine var this task writes, when some task reads it
    )

    def __init__(self, key, kind: int, depkeys: tuple = ()) -> None:
        self.key = key
        self.kind = kind
        self.depkeys = depkeys
        self.fwd = None  # not self: a node must not hold itself, or only the collector frees it
        self.value = None
        self.var = None
        self.out = False
        self.prio = None
        self.readers = 0
        self.height = 0
        self.mark = 0
        self.at = 0
        self.args = self.kwargs = self.fn = self.spec = None
        self.refs = self.deps = ()

    def call(self):
        """Compute this task's value from the values of its dependencies."""
        refs = self.refs
        if self.kind == CALL:
            args = self.args
            if args is None:
                args = [d.value for d in refs]
            else:
                args = list(args)
                for i, d in refs:
                    args[i] = d.value
            kwargs = self.kwargs
            return self.fn(*args) if kwargs is None else self.fn(*args, **kwargs)
        return self.spec(dict(zip(self.depkeys, [d.value for d in refs], strict=True)))

    def store(self, value) -> None:
        """Keep this task's value; let go of each input whose last reader this was."""
        self.value = value
        for d in self.deps:
            if next(d.left) == d.readers - 1 and not d.out:
                d.value = None

    def run(self, ctx) -> None:
        """The op's function when no callback watches: run, store, release, signal."""
        c = self.c
        if c.stop:
            return
        try:
            self.store(c.context.copy().run(self.call))
            self.refs = self.deps = ()  # a long chain of nodes is not kept alive link by link
            if self.out and next(c.outputs) == c.last_output:
                c.done.set()
        except BaseException as exc:  # the compute reports it; the engine never sees it
            c.fail(self, exc)

    def run_observed(self, ctx) -> None:
        """The op's function under dask callbacks or a cache mapping: dask.local's state, kept exact."""
        c = self.c
        key = self.key
        try:
            with c.lock:
                if c.stop:
                    return
                c.started(key)
                for pretask in c.pretask:
                    pretask(key, c.dsk, c.state)
            value = c.context.copy().run(self.call)
            with c.lock:
                if c.stop:
                    return
                self.value = value
                c.finished(self, value)
                for posttask in c.posttask:
                    posttask(key, value, c.dsk, c.state, get_ident())
                if self.out and next(c.outputs) == c.last_output:
                    c.done.set()
        except BaseException as exc:
            c.fail(self, exc)

    def __repr__(self) -> str:
        kinds = ("data", "alias", "call", "spec")
        return (f"<Node {self.key!r} {kinds[self.kind]} deps={len(self.depkeys)} readers={self.readers}"
                f"{' requested' if self.out else ''}>")
