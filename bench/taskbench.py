"""Task graphs after Task Bench (Slaughter et al., SC'20), re-implemented from its definitions.

A graph has points (t, i): steps t = 0..T-1 and columns i = 0..W-1.  A task at
step t depends only on tasks of step t-1.  ``Graph.points(t)`` is the range of
columns that hold a task at step t (all of them except for ``dom`` and
``tree``); ``Graph.deps(t, i)`` is the sorted tuple of columns of step t-1
that task (t, i) consumes, always a subset of ``points(t-1)``; step 0 has no
dependencies.

Patterns (ranges are clamped to [0, W) unless a modulus is stated):

``trivial``
    no dependencies at all.
``no_comm``
    {i}: each column is an independent chain.
``stencil_1d``
    {i-1, i, i+1}.
``stencil_1d_periodic``
    {(i-1) mod W, i, (i+1) mod W}.
``dom``
    a diamond: step t holds columns [off(t), off(t) + width(t)) with
    width(t) = min(W, t+1, T-t) and off(t) = max(0, t + W - T); deps {i-1, i}.
``tree``
    step t holds columns [0, min(W, 2**t)); dep {i // 2}.
``fft``
    a butterfly: n = ceil(log2 W), d = (t + n - 1) mod n; deps
    {i - 2**d, i, i + 2**d}  (for W = 1, just {i}).
``all_to_all``
    every column of step t-1.
``nearest`` (radix r)
    the window [i - r//2, i + (r-1)//2].
``spread`` (radix r, period p)
    {(i + k*(W//r) + (d if k > 0 else 0)) mod W : 0 <= k < r}, d = t mod p.
``random_nearest`` (radix r, period p, fraction f)
    the ``nearest`` window, where each column j != i is kept when
    hash(graph index, r, d, j, i) / 2**64 < f (d = t mod p, the hash is
    SplitMix64 over those integers); i itself is always kept.

Each task produces a small output: ``(t, i, checksum)`` where the checksum
mixes the checksums of its inputs.  Every task checks that its inputs carry
the tags (t-1, j) of exactly its dependencies, and the final outputs are
compared with a serial evaluation, so a scheduler that reorders wrongly fails
instead of looking fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = [
    "PATTERNS",
    "Graph",
    "ValidationError",
    "dependency_table",
    "expected_outputs",
    "initial_checksum",
    "task_output",
]

PATTERNS = (
    "trivial",
    "no_comm",
    "stencil_1d",
    "stencil_1d_periodic",
    "dom",
    "tree",
    "fft",
    "all_to_all",
    "nearest",
    "spread",
    "random_nearest",
)

_M64 = (1 << 64) - 1


class ValidationError(AssertionError):
    """A task saw inputs that its dependencies cannot have produced."""


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _hash_ints(*values: int) -> int:
    h = 0
    for v in values:
        h = splitmix64(h ^ (v & _M64))
    return h


@dataclass(frozen=True)
class Graph:
    """One Task Bench graph.  ``index`` tells apart graphs run side by side."""

    pattern: str
    width: int
    steps: int
    radix: int = 3
    period: int = 3
    fraction: float = 0.25
    index: int = 0
    seeds: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern={self.pattern!r} is not one of {', '.join(PATTERNS)}")
        for name in ("width", "steps", "radix", "period"):
            value = getattr(self, name)
            if value.__class__ is not int or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction={self.fraction!r} must be within [0, 1]")
        # each column's starting checksum, computed once: task bodies stay cheap
        object.__setattr__(self, "seeds", tuple(_hash_ints(self.index, i, 0x5EED) for i in range(self.width)))

    # ---------------------------------------------------------------- shape
    def points(self, t: int) -> range:
        """Columns that hold a task at step ``t``."""
        w, steps = self.width, self.steps
        if self.pattern == "dom":
            width = min(w, t + 1, steps - t)
            off = max(0, t + w - steps)
            return range(off, off + width)
        if self.pattern == "tree":
            return range(0, min(w, 1 << min(t, 62)))
        return range(w)

    def ntasks(self) -> int:
        return sum(len(self.points(t)) for t in range(self.steps))

    def deps(self, t: int, i: int) -> tuple[int, ...]:
        """Sorted columns of step ``t - 1`` that task ``(t, i)`` consumes."""
        if t == 0:
            return ()
        w = self.width
        p = self.pattern
        if p == "trivial":
            cand = ()
        elif p == "no_comm":
            cand = (i,)
        elif p == "stencil_1d":
            cand = (i - 1, i, i + 1)
        elif p == "stencil_1d_periodic":
            cand = ((i - 1) % w, i, (i + 1) % w)
        elif p == "dom":
            cand = (i - 1, i)
        elif p == "tree":
            cand = (i // 2,)
        elif p == "fft":
            n = math.ceil(math.log2(w)) if w > 1 else 0
            if n == 0:
                cand = (i,)
            else:
                step = 1 << ((t + n - 1) % n)
                cand = (i - step, i, i + step)
        elif p == "all_to_all":
            cand = range(w)
        elif p == "nearest":
            cand = range(i - self.radix // 2, i + (self.radix - 1) // 2 + 1)
        elif p == "spread":
            d = t % self.period
            cand = tuple((i + k * (w // self.radix) + (d if k > 0 else 0)) % w for k in range(self.radix))
        else:  # random_nearest
            d = t % self.period
            window = range(i - self.radix // 2, i + (self.radix - 1) // 2 + 1)
            limit = self.fraction * 2.0**64
            cand = tuple(j for j in window
                         if j == i or _hash_ints(self.index, self.radix, d, j, i) < limit)
        prev = self.points(t - 1)
        return tuple(sorted({j for j in cand if j in prev}))


def initial_checksum(graph: Graph, i: int) -> int:
    return graph.seeds[i]


def dependency_table(graph: Graph) -> list[list[tuple[int, ...]]]:
    """``table[t][i] == graph.deps(t, i)`` for every task, computed once."""
    return [[graph.deps(t, i) if i in graph.points(t) else () for i in range(graph.width)]
            for t in range(graph.steps)]


def task_output(graph: Graph, t: int, i: int, deps: tuple[int, ...], inputs) -> tuple[int, int, int]:
    """Check ``inputs`` (outputs of ``deps``, in order); return task (t, i)'s output."""
    if len(inputs) != len(deps):
        raise ValidationError(f"task ({t}, {i}) of graph {graph.index}: got {len(inputs)} inputs, "
                              f"expected {len(deps)}")
    acc = graph.seeds[i] ^ t
    for j, value in zip(deps, inputs, strict=False):  # lengths checked above
        if value is None or value[0] != t - 1 or value[1] != j:
            raise ValidationError(f"task ({t}, {i}) of graph {graph.index}: input from column {j} is "
                                  f"{value!r}, expected the output of task ({t - 1}, {j})")
        acc = (acc * 0x100000001B3 + value[2]) & _M64
    return (t, i, acc)


def expected_outputs(graph: Graph) -> dict[int, tuple[int, int, int]]:
    """The last output of every column, computed serially."""
    last: dict[int, tuple[int, int, int]] = {}
    prev: dict[int, tuple] = {}
    for t in range(graph.steps):
        cur = {}
        for i in graph.points(t):
            deps = graph.deps(t, i)
            cur[i] = task_output(graph, t, i, deps, [prev[j] for j in deps])
        last.update(cur)
        prev = cur
    return last
