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

import itertools
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from .model import RunModel

__all__ = ["Group", "Iterations", "bookkeeping", "find_iterations", "group_ops"]

MAX_CANDIDATES = 6  # anchor names tried, fewest occurrences first
WIDTHS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)


def bookkeeping(model: RunModel) -> list[bool]:
    """For each op, whether it is the engine's bookkeeping (see the module docstring)."""
    ops = model.ops
    flags = [r.name.startswith("delete ") and not r.reads and len(r.writes) == 1
             and r.writes[0][1] == r.name[7:] for r in ops]
    writers: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for i, r in enumerate(ops):
        for serial, _, version in r.writes:
            writers[(r.engine, serial, version)].append(i)
    for same in writers.values():
        if len(same) > 1:
            for c in same:
                if any(_encloses(ops[c], ops[m]) for m in same if m != c):
                    flags[c] = True
    return flags


def _encloses(c, m) -> bool:
    """Whether op ``m`` runs inside op ``c`` and is shorter (a member inside its container)."""
    return c.start <= m.start and m.end <= c.end and m.end - m.start < c.end - c.start


@dataclass
class Iterations:
    """The anchor op name and each op's iteration (0: before the first anchor op)."""

    anchor: str | None
    of: list[int]

    @property
    def count(self) -> int:
        return max(self.of, default=0)


def find_iterations(model: RunModel, visible: list[bool], order: list[int] | None = None) -> Iterations:
    """Detect the iteration structure of a run (see the module docstring); anchor None if there is none."""
    ops = model.ops
    order = order if order is not None else model.topo_order()
    occurrences: dict[str, list[int]] = defaultdict(list)
    for i in order:
        if visible[i]:
            occurrences[ops[i].name].append(i)
    n = sum(visible)
    candidates = []
    for name, occ in occurrences.items():
        if 2 <= len(occ) <= max(2, n // 2):
            by_start = sorted(occ, key=lambda i: ops[i].start)
            if all(ops[b].start >= model.end[a] for a, b in itertools.pairwise(by_start)):
                candidates.append(name)
    candidates.sort(key=lambda nm: (len(occurrences[nm]), nm))
    best, best_spread = Iterations(None, [0] * len(ops)), 0.0
    for name in candidates[:MAX_CANDIDATES]:
        of = _chain_counts(model, order, name, visible)
        if of is not None:
            spread = _entropy(Counter(of[i] for i in range(len(of)) if visible[i]).values(), n)
            if spread > best_spread:
                best, best_spread = Iterations(name, of), spread
    return best


def _entropy(counts, n: int) -> float:
    """How evenly ops spread over iterations: the anchor that spreads them most explains the run best
    (a chain of result writes leaves nearly every op in iteration 0)."""
    return -sum(c / n * math.log(c / n) for c in counts if c)


def _chain_counts(model: RunModel, order: list[int], name: str, visible: list[bool]) -> list[int] | None:
    """Per op, the anchor ops among its dependencies (itself included); None if they form no chain."""
    ops, edges, preds = model.ops, model.edges, model.preds
    of = [0] * len(ops)
    seen = 0
    for i in order:
        k = 0
        for e in preds[i]:
            v = of[edges[e][0]]
            if v > k:
                k = v
        if visible[i] and ops[i].name == name:
            k += 1
            seen += 1
            if k != seen:  # this occurrence does not depend on the one before it
                return None
        of[i] = k
    return of


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


def group_ops(model: RunModel, visible: list[bool], iterations: Iterations,
              max_nodes: int) -> list[Group]:
    """Visible ops in groups by name and iteration range, at most ``max_nodes`` groups where possible.

    Iterations merge into ranges of 1, 2, 5, 10, ... until the groups fit;
    without iterations (or when even the widest ranges do not fit) ops
    group by name alone, and past ``max_nodes`` names the names with the
    least total time share one group, ``other``.
    """
    ops = model.ops
    shown = [i for i in range(len(ops)) if visible[i]]
    if iterations.anchor is not None:
        names_per_iter: dict[int, set] = defaultdict(set)
        for i in shown:
            names_per_iter[iterations.of[i]].add(ops[i].name)
        for width in WIDTHS:
            keys = {(nm, k // width) for k, names in names_per_iter.items() for nm in names}
            if len(keys) <= max_nodes:
                return _collect(model, shown, lambda i, w=width: (ops[i].name, iterations.of[i] // w),
                                iterations, width)
    totals: dict[str, int] = defaultdict(int)
    for i in shown:
        totals[ops[i].name] += ops[i].duration
    kept = set(sorted(totals, key=lambda nm: (-totals[nm], nm))[:max(1, max_nodes - 1)])
    other = f"other ({len(totals) - len(kept)} names)"
    return _collect(model, shown, lambda i: (ops[i].name if ops[i].name in kept else other, None), None, 1)


def _collect(model, shown, key_of, iterations: Iterations | None, width: int) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for i in shown:
        key = key_of(i)
        g = groups.get(key)
        if g is None:
            name = key[0]
            first = None if key[1] is None else key[1] * width
            last = None if key[1] is None else key[1] * width + width - 1
            g = groups[key] = Group(name, first, last)
        g.members.append(i)
        g.total_ns += model.ops[i].duration
    out = list(groups.values())
    if iterations is not None:
        top = iterations.count
        for g in out:  # ranges end at the last iteration there is
            g.last = min(g.last, top)
    out.sort(key=lambda g: (g.first if g.first is not None else -1, g.members[0]))
    return out
