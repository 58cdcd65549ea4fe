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

:func:`dependency_edges` walks Python tuples (a plan's few hundred ops);
:func:`dependency_edge_arrays` applies the same rules to numpy columns with
one sort (a trace's hundred thousand), and the tests check that both give
the same edges.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

__all__ = ["HAZARDS", "dependency_edge_arrays", "dependency_edges", "pushed_in_order"]

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


def dependency_edge_arrays(op, var, version, write) -> tuple[np.ndarray, ...]:
    """The edges of :func:`dependency_edges` from columns of accesses, one element per access.

    ``op``: the op's index (accesses in the order ops are walked), ``var``: a
    var id >= 0, ``version``: the version read or made (>= 0), ``write``:
    whether it is a write.  As in :func:`dependency_edges`, of two writes of
    one version the later one counts.  Returns int64 arrays ``src, dst, var,
    version, hazard`` (hazard: index into :data:`HAZARDS`), in no set order.
    """
    op, var, version = (np.asarray(a, dtype=np.int64) for a in (op, var, version))
    write = np.asarray(write, dtype=bool)
    if not len(op):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, empty
    order = np.lexsort((version, var))  # stable: equal accesses keep their walking order
    v, k, w, o = var[order], version[order], write[order], op[order]
    first = np.ones(len(v), dtype=bool)  # each (var, version) is one group of accesses
    first[1:] = (v[1:] != v[:-1]) | (k[1:] != k[:-1])
    group = np.cumsum(first) - 1
    g_var, g_ver = v[first], k[first]
    n = len(g_var)
    writer = np.full(n, -1, dtype=np.int64)  # the last write of each version
    at = np.flatnonzero(w)
    last = np.ones(len(at), dtype=bool)
    last[:-1] = group[at[1:]] != group[at[:-1]]
    writer[group[at[last]]] = o[at[last]]
    after = np.full(n, -1, dtype=np.int64)  # the writer of the next version of the same var
    follows = (g_var[1:] == g_var[:-1]) & (g_ver[1:] - 1 == g_ver[:-1])
    after[:-1][follows] = writer[1:][follows]
    reads = np.flatnonzero(~w)
    rg, ro = group[reads], o[reads]
    raw = writer[rg] >= 0
    war = after[rg] >= 0
    waw = (writer >= 0) & (after >= 0) & (np.bincount(rg, minlength=n) == 0)
    parts = ((writer[rg][raw], ro[raw], g_var[rg][raw], g_ver[rg][raw], 0),
             (ro[war], after[rg][war], g_var[rg][war], g_ver[rg][war] + 1, 1),
             (writer[waw], after[waw], g_var[waw], g_ver[waw] + 1, 2))
    src, dst, evar, ever = (np.concatenate([p[c] for p in parts]) for c in range(4))
    hazard = np.concatenate([np.full(len(p[0]), p[4], dtype=np.int64) for p in parts])
    return src, dst, evar, ever, hazard


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
