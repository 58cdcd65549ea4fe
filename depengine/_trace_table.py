"""A trace's ops as numpy columns, and what is computed from them once.

A 100 000-op trace is a few hundred thousand dependencies: walking them as
Python objects costs seconds, as columns a few tens of milliseconds.  A
:class:`TraceTable` holds every field a statistic or a picture reads, by op
index (the position in ``Trace.ops``), the var accesses in CSR form (per
op, its reads then its writes), and, computed on first use and then kept,
the dependency edges (``_edges.dependency_edge_arrays``), each op's
predecessors, a topological order and the critical path.  ``Trace.stats()``,
``Trace.edges()`` and viz/ all read this one table.

The table is a snapshot of the records it was built from: records changed
afterwards are not seen (as with ``Trace.edges()`` before it).
"""

from __future__ import annotations

from itertools import chain, pairwise
from operator import attrgetter, itemgetter

import numpy as np

from ._edges import HAZARDS, dependency_edge_arrays

__all__ = ["TraceTable", "codes"]

I64 = np.int64


def codes(values) -> tuple[list, np.ndarray]:
    """``(distinct values in order of first appearance, the code of each value)``."""
    values = values if isinstance(values, list) else list(values)
    distinct = list(dict.fromkeys(values))
    index = {v: k for k, v in enumerate(distinct)}
    return distinct, np.fromiter(map(index.__getitem__, values), dtype=np.int32, count=len(values))


def _pair_ids(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """A dense id per distinct ``(a, b)`` pair, and how many there are."""
    if not len(a):
        return np.zeros(0, dtype=I64), 0
    order = np.lexsort((b, a))
    new = np.ones(len(a), dtype=bool)
    new[1:] = (a[order][1:] != a[order][:-1]) | (b[order][1:] != b[order][:-1])
    ids = np.empty(len(a), dtype=I64)
    ids[order] = np.cumsum(new) - 1
    return ids, int(new.sum())


class TraceTable:
    """The ops of a trace as columns (see the module docstring).

    Per op: ``engine``, ``id``, ``priority``, ``push``, ``ready``, ``start``,
    ``end``, ``stop`` (``gpu_end`` when the op has one, else ``end``),
    ``has_gpu``, ``duration`` (``stop - start``, at least 0), codes into
    ``names``, ``lanes``, ``devices``, ``kinds`` and ``states``, and
    ``errors`` (op index -> error text, for the ops that have one).  Accesses:
    op ``i`` owns ``acc_off[i]:acc_off[i + 1]`` of ``acc_op``, ``acc_var``
    (one id per engine and var serial), ``acc_serial``, ``acc_ver``,
    ``acc_write`` and ``acc_name`` (a code into ``var_names``, the name the
    access recorded); ``var_name`` is each var id's name (its last access's).
    Raises OverflowError when a number does not fit in 64 bits.
    """

    INTS = ("id", "engine", "priority", "push", "ready", "start", "end")
    TEXTS = {"name": "names", "device": "devices", "kind": "kinds", "lane": "lanes", "state": "states"}

    def __init__(self, ops) -> None:
        """The table of a list of :class:`~depengine.trace.OpRecord` (in key order)."""
        n = len(ops)
        for field in self.INTS:
            setattr(self, field, np.fromiter(map(attrgetter(field), ops), dtype=I64, count=n))
        for field in self.TEXTS:
            self._set_codes(field, *codes(list(map(attrgetter(field), ops))))
        self.errors = {i: r.error for i, r in enumerate(ops) if r.error is not None}
        flat = list(chain.from_iterable(r.reads + r.writes for r in ops))
        self.acc_serial = np.fromiter(map(itemgetter(0), flat), dtype=I64, count=len(flat))
        self.acc_ver = np.fromiter(map(itemgetter(2), flat), dtype=I64, count=len(flat))
        self.var_names, self.acc_name = codes(list(map(itemgetter(1), flat)))
        self._derive([r.gpu_end for r in ops], np.fromiter(map(len, map(attrgetter("reads"), ops)), I64, n),
                     np.fromiter(map(len, map(attrgetter("writes"), ops)), I64, n))

    @classmethod
    def from_columns(cls, ints: dict, gpu_end: list, texts: dict, errors: dict, n_reads, n_writes,
                     acc_serial, acc_var_name, acc_ver, var_names: list[str]) -> TraceTable:
        """The table of columns as a trace file stores them (format 2): ``ints[field]`` and
        ``texts[field] = (strings, codes)`` per field of :attr:`INTS` and :attr:`TEXTS`; the caller
        has checked lengths and codes."""
        t = cls.__new__(cls)
        for field in cls.INTS:
            setattr(t, field, np.asarray(ints[field], dtype=I64))
        for field in cls.TEXTS:
            t._set_codes(field, texts[field][0], np.asarray(texts[field][1], dtype=np.int32))
        t.errors = errors
        t.acc_serial, t.acc_ver = np.asarray(acc_serial, dtype=I64), np.asarray(acc_ver, dtype=I64)
        t.var_names, t.acc_name = var_names, np.asarray(acc_var_name, dtype=np.int32)
        t._derive(gpu_end, np.asarray(n_reads, dtype=I64), np.asarray(n_writes, dtype=I64))
        return t

    def _set_codes(self, field: str, strings: list[str], coded: np.ndarray) -> None:
        setattr(self, field, coded)
        setattr(self, self.TEXTS[field], strings)

    def _derive(self, gpu_end: list, n_reads: np.ndarray, n_writes: np.ndarray) -> None:
        """What both constructors compute from the stored columns."""
        n = self.n = len(self.id)
        self.has_gpu = np.fromiter((g is not None for g in gpu_end), dtype=bool, count=n)
        self.stop = self.end.copy()
        self.stop[self.has_gpu] = np.fromiter((g for g in gpu_end if g is not None), dtype=I64)
        self.duration = np.maximum(self.stop - self.start, 0)
        self.n_reads = n_reads
        per_op = n_reads + n_writes
        self.acc_off = np.zeros(n + 1, dtype=I64)
        np.cumsum(per_op, out=self.acc_off[1:])
        self.acc_op = np.repeat(np.arange(n, dtype=I64), per_op)
        self.acc_write = np.repeat(np.tile(np.array([False, True]), n),
                                   np.stack([n_reads, n_writes], axis=1).ravel())
        self.acc_var, n_vars = _pair_ids(self.engine[self.acc_op], self.acc_serial)
        self.var_name = np.zeros(n_vars, dtype=np.int32)  # each var's name: that of its last access
        ids, last = np.unique(self.acc_var[::-1], return_index=True)
        self.var_name[ids] = self.acc_name[::-1][last]
        self._edge_cols: tuple[np.ndarray, ...] | None = None
        self._critical: np.ndarray | None = None
        self._preds: list[list[int]] | None = None

    def records(self) -> list:
        """Every op as an :class:`~depengine.trace.OpRecord`, in order."""
        from .trace import OpRecord

        accesses = self._access_rows(0, len(self.acc_op))
        off, n_reads = self.acc_off.tolist(), self.n_reads.tolist()
        cols = {f: getattr(self, f).tolist() for f in self.INTS}
        texts = {f: list(map(getattr(self, strings).__getitem__, getattr(self, f).tolist()))
                 for f, strings in self.TEXTS.items()}
        gpu = [g if has else None for g, has in zip(self.stop.tolist(), self.has_gpu.tolist(), strict=True)]
        out = []
        for i in range(self.n):
            mid = off[i] + n_reads[i]
            out.append(OpRecord(**{f: cols[f][i] for f in self.INTS}, **{f: texts[f][i] for f in self.TEXTS},
                                reads=accesses[off[i]:mid], writes=accesses[mid:off[i + 1]],
                                error=self.errors.get(i), gpu_end=gpu[i]))
        return out

    def record(self, i: int):
        """Op ``i`` as an :class:`~depengine.trace.OpRecord` (the others are not made)."""
        from .trace import OpRecord

        accesses = self._access_rows(int(self.acc_off[i]), int(self.acc_off[i + 1]))
        mid = int(self.n_reads[i])
        texts = {f: getattr(self, strings)[getattr(self, f)[i]] for f, strings in self.TEXTS.items()}
        return OpRecord(**{f: int(getattr(self, f)[i]) for f in self.INTS}, **texts,
                        reads=accesses[:mid], writes=accesses[mid:], error=self.errors.get(i),
                        gpu_end=int(self.stop[i]) if self.has_gpu[i] else None)

    def _access_rows(self, a: int, b: int) -> list[tuple[int, str, int]]:
        names = [self.var_names[k] for k in self.acc_name[a:b].tolist()]
        return list(zip(self.acc_serial[a:b].tolist(), names, self.acc_ver[a:b].tolist(), strict=True))

    # ------------------------------------------------------------ per op
    def keys(self) -> list[tuple[int, int]]:
        """Each op's ``(engine, id)``."""
        return list(zip(self.engine.tolist(), self.id.tolist(), strict=True))

    def is_state(self, state: str) -> np.ndarray:
        """Which ops are in ``state`` (done, failed, skipped)."""
        if state not in self.states:
            return np.zeros(self.n, dtype=bool)
        return self.state == self.states.index(state)

    def wall_ns(self) -> int:
        """From the first push to the last end (GPU work included)."""
        return int(self.stop.max() - self.push.min()) if self.n else 0

    # ------------------------------------------------------------ dependencies
    def edges(self) -> tuple[np.ndarray, ...]:
        """``src, dst, var, version, hazard`` by op index, sorted by (dst, src, var name, hazard, version)."""
        if self._edge_cols is None:
            src, dst, var, ver, hazard = dependency_edge_arrays(self.acc_op, self.acc_var, self.acc_ver,
                                                                self.acc_write)
            names = self.var_names
            rank = np.zeros(len(names), dtype=I64)  # of each var name, in string order
            alphabetical = sorted(range(len(names)), key=names.__getitem__)
            rank[np.array(alphabetical, dtype=I64)] = np.arange(len(names))
            order = np.lexsort((ver, hazard, rank[self.var_name[var]], src, dst))
            self._edge_cols = tuple(a[order] for a in (src, dst, var, ver, hazard))
        return self._edge_cols

    def pred_offsets(self) -> np.ndarray:
        """Op ``i``'s incoming edges are ``pred_offsets()[i]:pred_offsets()[i + 1]`` of :meth:`edges`."""
        return np.searchsorted(self.edges()[1], np.arange(self.n + 1))

    def edge_hazards(self) -> list[str]:
        return [HAZARDS[h] for h in self.edges()[4].tolist()]

    def in_push_order(self) -> bool:
        """Whether every edge runs from an earlier op to a later one (true of every recorded run)."""
        src, dst = self.edges()[:2]
        return bool((src < dst).all())

    def topo_order(self) -> np.ndarray:
        """Op indices with every op after its dependencies; push order breaks any cycle a trace has."""
        if self.in_push_order():
            return np.arange(self.n)
        src, dst = (a.tolist() for a in self.edges()[:2])
        n = self.n
        waiting = [0] * n
        succs: list[list[int]] = [[] for _ in range(n)]
        for s, d in zip(src, dst, strict=True):
            if s != d:
                waiting[d] += 1
                succs[s].append(d)
        ready = [i for i in range(n - 1, -1, -1) if not waiting[i]]
        order, placed = [], [False] * n
        nxt = 0
        while len(order) < n:
            if not ready:  # a cycle: take the earliest op not yet placed
                while placed[nxt]:
                    nxt += 1
                ready.append(nxt)
                waiting[nxt] = 0
            i = ready.pop()
            if placed[i]:
                continue
            placed[i] = True
            order.append(i)
            for d in succs[i]:
                waiting[d] -= 1
                if waiting[d] == 0 and not placed[d]:
                    ready.append(d)
        return np.array(order, dtype=I64)

    def longest_path(self, weight, order=None, chain: bool = False) -> tuple[list[int], list[int]] | None:
        """Per op, the largest total ``weight`` of a chain of dependencies ending with it, and the
        predecessor it came through (-1: none), visiting ops in ``order`` (default: push order).

        A predecessor not yet visited counts as 0; of equal predecessors the
        first (lowest index) wins; a predecessor is only taken when its total
        is above 0.  With ``chain`` (weights 0 or 1) the walk gives up, and
        returns None, at the first op of weight 1 whose total is not the number
        of such ops visited so far: they do not form one chain of dependencies.
        """
        preds = self.pred_lists()
        w = weight.tolist() if hasattr(weight, "tolist") else list(weight)
        best = [0] * self.n
        via = [-1] * self.n
        seen = 0
        for i in (range(self.n) if order is None else np.asarray(order).tolist()):
            b, p = 0, -1
            for s in preds[i]:
                v = best[s]
                if v > b:
                    b, p = v, s
            best[i] = b + w[i]
            via[i] = p
            if chain and w[i]:
                seen += 1
                if best[i] != seen:
                    return None
        return best, via

    def pred_lists(self) -> list[list[int]]:
        """Per op, the sources of its incoming edges, as Python lists (walks in Python are twice as
        fast over these as over the arrays); made once."""
        if self._preds is None:
            src, off = self.edges()[0].tolist(), self.pred_offsets().tolist()
            self._preds = [src[a:b] for a, b in pairwise(off)]
        return self._preds

    def critical_path(self) -> np.ndarray:
        """Op indices of the chain of dependent ops with the largest total duration, first op first."""
        if self._critical is None:
            path: list[int] = []
            if self.n:
                best, via = self.longest_path(self.duration)
                i = max(range(self.n), key=best.__getitem__)
                while i >= 0:
                    path.append(i)
                    i = via[i]
            self._critical = np.array(path[::-1], dtype=I64)
        return self._critical

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        edges = "?" if self._edge_cols is None else len(self._edge_cols[0])
        return f"<TraceTable ops={self.n} accesses={len(self.acc_op)} edges={edges}>"
