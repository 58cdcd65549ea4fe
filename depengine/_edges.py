"""The dependency walker: which earlier ops an op waits for, from the vars it named.

One walker serves recorded plans (before they run: the order of their ops)
and traces (after a run: the versions each op saw).  It works on versions:
each access is ``(var, version)``, the version a read saw or the version a
write made.  Then, per var,

- the write that made version k precedes every read of version k (RAW);
- every read of version k precedes the write that makes version k+1 (WAR);
- when nobody read version k, the write that made it precedes the write
  that makes version k+1 directly (WAW).

These are exactly the orders the var queues of ``_var.py`` enforce, with no
edge implied by the others; an access whose partner is not among the ops
walked (an op pushed before a trace began) gives no edge.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

__all__ = ["HAZARDS", "dependency_edges", "pushed_in_order"]

HAZARDS = ("RAW", "WAR", "WAW")


def dependency_edges(ops: Iterable[tuple]) -> list[tuple]:
    """``ops``: ``(key, reads, writes)`` with ``reads``/``writes`` lists of ``(var, version)``.

    Returns ``(src key, dst key, var, version, hazard)`` for every dependency,
    where ``version`` is the one the edge carries (made by a RAW's source,
    made by a WAR's or WAW's destination).
    """
    writer: dict = {}                 # (var, version made) -> key
    readers: dict = defaultdict(list)  # (var, version read) -> keys
    for key, reads, writes in ops:
        for access in writes:
            writer[access] = key
        for access in reads:
            readers[access].append(key)
    edges = []
    for (var, version), w in writer.items():
        rs = readers.get((var, version))
        if rs:
            for r in rs:
                edges.append((w, r, var, version, "RAW"))
        else:
            nxt = writer.get((var, version + 1))
            if nxt is not None:
                edges.append((w, nxt, var, version + 1, "WAW"))
    for (var, version), rs in readers.items():
        nxt = writer.get((var, version + 1))
        if nxt is not None:
            for r in rs:
                edges.append((r, nxt, var, version + 1, "WAR"))
    return edges


def pushed_in_order(accesses: Iterable[tuple]) -> list[tuple]:
    """Versions for ops given in push order as ``(reads, writes)`` lists of vars.

    Returns ``(index, reads, writes)`` with ``(var, version)`` accesses, for
    :func:`dependency_edges`; versions count from 0 at the first op.
    """
    made: dict = {}
    out = []
    for i, (reads, writes) in enumerate(accesses):
        r = [(v, made.get(v, 0)) for v in reads]
        w = []
        for v in writes:
            k = made.get(v, 0) + 1
            made[v] = k
            w.append((v, k))
        out.append((i, r, w))
    return out
