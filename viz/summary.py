"""Making a big run fit on a page: bookkeeping ops, detected iterations, groups of ops.

Bookkeeping ops are the engine's, not the program's: the op that
``delete_var`` pushes (``delete x``: no reads, one write of ``x``) and the
container op of a bulk or a recorded plan whose member ops are recorded on
their own (it writes the same var versions as an op that runs inside it).

An iteration is found by looking for an op name whose occurrences form one
chain of dependencies, each occurrence depending on the one before, like
the POTRF of step k of a tiled Cholesky or the runs of a recorded plan.  An
op's iteration is then the number of those anchor ops among its
dependencies (itself included): everything step k computes shares k.  Of
several such names, the one that spreads the ops most evenly over the
iterations wins (highest entropy).

Groups put ops with the same name (and iteration, when there is one) into
one node that shows their count and total time.  When a page would still
hold too many, consecutive iterations are merged into ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .model import RunModel

__all__ = ["Group", "Iterations", "bookkeeping", "find_iterations", "group_ops"]

MAX_CANDIDATES = 6  # anchor names tried, fewest occurrences first
WIDTHS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)


def bookkeeping(model: RunModel) -> list[bool]:
    """For each op, whether it is the engine's bookkeeping (see the module docstring)."""
    t = model.table
    n_acc = np.diff(t.acc_off)
    n_writes = n_acc - t.n_reads
    flags = np.zeros(t.n, dtype=bool)
    deletes = np.array([name.startswith("delete ") for name in t.names], dtype=bool)[t.name]
    for i in np.flatnonzero(deletes & (n_acc == 1) & (n_writes == 1)).tolist():
        flags[i] = t.var_names[t.acc_name[t.acc_off[i]]] == t.names[t.name[i]][7:]
    w = np.flatnonzero(t.acc_write)
    order = w[np.lexsort((t.acc_ver[w], t.acc_var[w]))]  # writes of one var version side by side
    var, ver = t.acc_var[order], t.acc_ver[order]
    new = np.r_[True, (var[1:] != var[:-1]) | (ver[1:] != ver[:-1])]
    bounds = np.r_[np.flatnonzero(new), len(order)]
    shared = np.flatnonzero(np.diff(bounds) > 1)
    for k in shared.tolist():  # versions that two ops wrote: a container and its member
        same = t.acc_op[order[bounds[k]:bounds[k + 1]]].tolist()
        for c in same:
            if any(_encloses(t, c, m) for m in same if m != c):
                flags[c] = True
    return flags.tolist()


def _encloses(t, c: int, m: int) -> bool:
    """Whether op ``m`` runs inside op ``c`` and is shorter (a member inside its container)."""
    return bool(t.start[c] <= t.start[m] and t.end[m] <= t.end[c]
                and t.end[m] - t.start[m] < t.end[c] - t.start[c])


@dataclass
class Iterations:
    """The anchor op name and each op's iteration (0: before the first anchor op)."""

    anchor: str | None
    of: list[int]

    @property
    def count(self) -> int:
        return max(self.of, default=0)


def find_iterations(model: RunModel, visible, order=None) -> Iterations:
    """Detect the iteration structure of a run (see the module docstring); anchor None if there is none.

    ``visible``: per op, whether it counts; ``order``: a topological order (default the model's).
    """
    t = model.table
    order = np.asarray(order if order is not None else model.topo_order(), dtype=np.int64)
    shown = np.flatnonzero(np.asarray(visible, dtype=bool))
    n = len(shown)
    position = np.empty(t.n, dtype=np.int64)
    position[order] = np.arange(t.n)
    # names whose occurrences never overlap in time (by start, ties in dependency order)
    by_start = shown[np.lexsort((position[shown], t.start[shown], t.name[shown]))]
    names = t.name[by_start]
    overlap = (names[1:] == names[:-1]) & (t.start[by_start[1:]] < model.end[by_start[:-1]])
    counts = np.bincount(names, minlength=len(t.names))
    fits = (counts >= 2) & (counts <= max(2, n // 2))
    fits[names[1:][overlap]] = False
    candidates = sorted(np.flatnonzero(fits).tolist(), key=lambda c: (counts[c], t.names[c]))
    best, best_spread = Iterations(None, [0] * t.n), 0.0
    for code in candidates[:MAX_CANDIDATES]:
        of = _chain_counts(model, order, code, shown)
        if of is not None:
            spread = _entropy(np.bincount(np.asarray(of)[shown]), n)
            if spread > best_spread:
                best, best_spread = Iterations(t.names[code], of), spread
    return best


def _entropy(counts, n: int) -> float:
    """How evenly ops spread over iterations: the anchor that spreads them most explains the run best
    (a chain of result writes leaves nearly every op in iteration 0)."""
    share = counts[counts > 0] / n
    return float(-(share * np.log(share)).sum())


def _chain_counts(model: RunModel, order: np.ndarray, code: int, shown: np.ndarray) -> list[int] | None:
    """Per op, the anchor ops among its dependencies (itself included); None if they form no chain."""
    t = model.table
    anchor = np.zeros(t.n, dtype=np.int64)
    anchor[shown[t.name[shown] == code]] = 1
    found = t.longest_path(anchor, order, chain=True)
    return None if found is None else found[0]


@dataclass
class Group:
    """Ops shown as one node: same name, iterations ``first``..``last`` (None without iterations)."""

    name: str
    first: int | None
    last: int | None
    members: list[int] = field(default_factory=list)
    total_ns: int = 0

    @property
    def count(self) -> int:
        return len(self.members)

    def span(self) -> str:
        if self.first is None:
            return ""
        return f"k={self.first}" if self.first == self.last else f"k={self.first}..{self.last}"


def group_ops(model: RunModel, visible, iterations: Iterations, max_nodes: int) -> list[Group]:
    """Visible ops in groups by name and iteration range, at most ``max_nodes`` groups where possible.

    Iterations merge into ranges of 1, 2, 5, 10, ... until the groups fit;
    without iterations (or when even the widest ranges do not fit) ops
    group by name alone, and past ``max_nodes`` names the names with the
    least total time share one group, ``other``.
    """
    t = model.table
    shown = np.flatnonzero(np.asarray(visible, dtype=bool))
    names = t.name[shown]
    if iterations.anchor is not None:
        it = np.asarray(iterations.of, dtype=np.int64)[shown]
        span = int(it.max(initial=0)) + 1
        pairs = np.unique(names * span + it)  # each (name, iteration) once, in order
        for width in WIDTHS:
            merged = pairs // span * (span // width + 1) + pairs % span // width  # still in order
            if 1 + np.count_nonzero(np.diff(merged)) <= max_nodes:
                key = names * (span // width + 1) + it // width
                groups = _collect(model, shown, key, lambda k, w=width: (t.names[names[k]], it[k] // w))
                top = iterations.count
                for g in groups:  # ranges end at the last iteration there is
                    g.first, g.last = g.first * width, min(g.first * width + width - 1, top)
                return groups
    totals = np.bincount(names, weights=t.duration[shown], minlength=len(t.names))
    used = np.flatnonzero(np.bincount(names, minlength=len(t.names)))
    ranked = sorted(used.tolist(), key=lambda c: (-totals[c], t.names[c]))
    kept = np.zeros(len(t.names), dtype=bool)
    kept[ranked[:max(1, max_nodes - 1)]] = True
    other = f"other ({len(ranked) - int(kept.sum())} names)"
    key = np.where(kept[names], names, -1)
    return _collect(model, shown, key, lambda k: (t.names[names[k]] if kept[names[k]] else other, None))


def _collect(model: RunModel, shown: np.ndarray, key: np.ndarray, describe) -> list[Group]:
    """One group per distinct ``key`` of the shown ops; ``describe(k)`` gives the name and the
    iteration (or None) of the group of ``shown[k]``."""
    distinct, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    by_group = np.argsort(inverse.ravel(), kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(inverse.ravel(), minlength=len(distinct)))]
    totals = np.bincount(inverse.ravel(), weights=model.table.duration[shown], minlength=len(distinct))
    out = []
    for g in range(len(distinct)):
        name, k = describe(int(first[g]))
        members = shown[by_group[bounds[g]:bounds[g + 1]]].tolist()
        out.append(Group(name, None if k is None else int(k), None, members, int(totals[g])))
    out.sort(key=lambda g: (g.first if g.first is not None else -1, g.members[0]))
    return out
