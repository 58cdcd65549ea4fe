"""Fusing elementwise CPU ops of recorded plans into one kernel that skips what nobody observes.

A recorded plan offers this fuser groups of its ops (``groups``): elementwise
ops of ops/ on the CPU, all of one output shape, joined through the arrays
they produce (``exp((x*2+y)*(x-y))`` is one group of five).  The group
becomes one cfunc that makes a single pass over the data: it reads each
external input once, keeps every intermediate in a register, and writes
only the outputs someone can observe.  An intermediate is *dropped* (never
written, its memory never touched) when

- only later members of the group read it (no other op of the plan does),
  and
- no live array refers to it: nothing but the recording holds the array
  object (the user let go of it and of every view of it).

An intermediate the user kept is written, exactly as the unfused ops would
have written it; versions count every member's write either way.  The fused
kernel's block is packed once, when the plan is compiled, and a large one is
cut into parts that idle workers share, like any large op.
"""

from __future__ import annotations

import struct
import sys

import numpy as np

from depengine.plan import register_fuser

from . import _kernels
from ._core import Elementwise
from ._cpu import geometry, parts_body, parts_for, slot_class, split_blocks
from ._kernels import call
from .array import NDArray

__all__ = ["fuse", "groups"]


def groups(specs) -> list[list[int]]:
    """Groups of elementwise CPU ops of one shape connected through the arrays they produce, cut
    where an op between two members conflicts with an earlier member (the group runs where its
    last member did, so its members must be able to move there)."""
    parent: dict[int, int] = {}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    producer: dict[int, int] = {}  # id(array) -> spec that last wrote it
    for i, s in enumerate(specs):
        rec = s.meta
        if rec.__class__ is not Elementwise or rec.out.device.type != "cpu":
            continue
        parent[i] = i
        for x in rec.inputs:
            j = producer.get(id(x))
            if j is not None and specs[j].meta.shape == rec.shape:
                parent[find(j)] = find(i)
        producer[id(rec.out)] = i
    found: dict[int, list[int]] = {}
    for i in parent:
        found.setdefault(find(i), []).append(i)
    return [seg for g in found.values() for seg in _segments(specs, sorted(g)) if len(seg) > 1]


def _segments(specs, group: list[int]) -> list[list[int]]:
    """``group`` cut into runs whose members can all move to the run's last member."""
    runs, run = [], [group[0]]
    for k in group[1:]:
        between = specs[run[-1] + 1:k]
        if any(_conflict(specs[i], o) for i in run for o in between):
            runs.append(run)
            run = [k]
        else:
            run.append(k)
    runs.append(run)
    return runs


def _conflict(a, b) -> bool:
    """Whether ops ``a`` and ``b`` name a var that one of them writes (their order matters)."""
    return not (set(a.writes).isdisjoint(b.reads) and set(a.writes).isdisjoint(b.writes)
                and set(a.reads).isdisjoint(b.writes))


def _refs(x) -> int:
    return sys.getrefcount(x)


def _calibrate() -> int:
    """``_refs`` of an object held by exactly one attribute, read through that attribute."""
    class Holder:
        __slots__ = ("x",)
    h = Holder()
    h.x = object()
    return _refs(h.x)


_ONE_HOLDER = _calibrate()


def _holders(recs) -> dict[int, int]:
    """id(array) -> how many references the group's records hold to it."""
    count: dict[int, int] = {}
    for rec in recs:
        for x in rec.inputs:
            if x.__class__ is NDArray:
                count[id(x)] = count.get(id(x), 0) + 1
        count[id(rec.out)] = count.get(id(rec.out), 0) + 1
    return count


def _observable(rec, holders: dict[int, int]) -> bool:
    """Whether anything besides the recording (the user, a view, a pending op) holds ``rec.out``."""
    return _refs(rec.out) - _ONE_HOLDER + 1 > holders[id(rec.out)]


def fuse(specs, read_elsewhere):
    """``(fn, name)`` doing the work of ``specs`` (a group from ``groups``) in one pass, or None.

    ``read_elsewhere``: the vars the plan's other ops read (their intermediates are written).
    """
    recs = [s.meta for s in specs]
    if not _fusable(specs, recs):
        return None
    holders = _holders(recs)
    keep = [r.out._var in read_elsewhere
            or any(r.out._var in specs[j].reads for j in range(k + 1))  # its value before the plan matters
            or _observable(r, holders) for k, r in enumerate(recs)]
    return _build(recs, keep, recs[0].shape)


def _fusable(specs, recs) -> bool:
    """One shape; each var written once; an array a member writes is used only as that very array.

    (A function of its own: its loop variables, which refer to arrays, are gone when
    ``_observable`` counts references.)
    """
    shape = recs[0].shape
    if any(r.__class__ is not Elementwise or r.shape != shape or r.out.shape != shape for r in recs):
        return False
    writer: dict[int, int] = {}  # id(var) -> the member writing it
    for k, s in enumerate(specs):
        for v in s.writes:
            if id(v) in writer:
                return False  # written twice: the fused op would count one write
            writer[id(v)] = k
    for r in recs:
        for x in r.inputs:
            if x.__class__ is NDArray and id(x._var) in writer and x is not recs[writer[id(x._var)]].out:
                return False
    return True


def _build(recs, keep, shape):
    out_index = {id(r.out): k for k, r in enumerate(recs)}
    inputs: list = []         # external operands: arrays (deduplicated) and scalars
    index: dict[int, int] = {}
    steps = []
    for k, r in enumerate(recs):
        refs = []
        for x in r.inputs:
            if x.__class__ is NDArray:
                j = out_index.get(id(x))
                if j is not None and j < k:
                    refs.append(f"t{j}")
                    continue
                if id(x) not in index:
                    index[id(x)] = len(inputs)
                    inputs.append(x)
                refs.append(index[id(x)])
            else:
                inputs.append(x)
                refs.append(len(inputs) - 1)
        steps.append((r.op, r.work, r.out.dtype, refs))
    arrays = [x for x in inputs if x.__class__ is NDArray]
    outs = [r.out for r, kept in zip(recs, keep, strict=True) if kept]
    found = geometry(shape, [*arrays, *outs])
    if found is None:
        return None
    rows, inner, geo = found
    geo_of = {id(x): g for x, g in zip([*arrays, *outs], geo, strict=True)}
    slots, classes, dtypes = [], [], []
    for x, step_work in zip(inputs, _scalar_works(inputs, steps), strict=True):
        if x.__class__ is NDArray:
            slots.append(geo_of[id(x)])
            classes.append(slot_class(geo_of[id(x)]))
            dtypes.append(x.dtype)
        else:
            slots.append((x, 0, 0))
            classes.append("K")
            dtypes.append(step_work)
    for o in outs:
        slots.append(geo_of[id(o)])
        classes.append("C" if geo_of[id(o)][2] == 1 else "S")
        dtypes.append(o.dtype)
    entry, packer = _compile(steps, keep, classes, dtypes)
    eng = recs[-1].out._engine
    name = "fused(" + "+".join(r.op for r in recs) + ")"
    nparts = parts_for(eng, rows * inner)
    hold = (tuple(inputs), tuple(outs))  # the arrays stay alive while the plan does
    values = [v for slot in slots for v in slot]
    if nparts == 1:
        block = packer.pack(0, rows, inner, *values)

        def fn(ctx, entry=entry, block=block, hold=hold):
            call(entry, block)
        return fn, name
    blocks = split_blocks(packer, rows, inner, values, classes, dtypes, nparts)
    body = parts_body(eng, name, entry, blocks)
    return (lambda ctx, hold=hold: body(ctx)), name


def _scalar_works(inputs, steps):
    """Per external operand: the work dtype of the step using it (what a scalar is cast to)."""
    works = [None] * len(inputs)
    for _, work, _, refs in steps:
        for ref in refs:
            if not isinstance(ref, str):
                works[ref] = works[ref] or work
    return works


def _compile(steps, keep, classes, dtypes):
    key = repr((steps, keep, classes, [np.dtype(d).str for d in dtypes]))
    name = _kernels.structure_name("_fused_", key)
    nin = len(classes) - sum(keep)
    fmt = "<qqq"
    setup, rows, body = [], [], []
    loads = []
    for i in range(len(classes)):
        cls, dt = classes[i], np.dtype(dtypes[i])
        if cls == "K":
            fmt += ("d" if dt.kind == "f" else "q") + "qq"
        else:
            fmt += "qqq"
        s, r, elem = _kernels.row_loads(f"a{i}", 3 + 3 * i, cls, dt, dt)
        setup += s
        rows += r
        loads.append(elem)
    kept = iter(range(nin, len(classes)))
    for k, (op, work, out_dtype, refs) in enumerate(steps):
        wname = np.dtype(work).name
        for var, ref in zip("xy", refs, strict=False):
            value = ref if isinstance(ref, str) else loads[ref]
            body.append(f"{var} = np.{wname}({value})")
        body.append(f"t{k} = np.{np.dtype(out_dtype).name}({_kernels.expression(op, np.dtype(work))})")
        if keep[k]:
            body.append(f"{loads[next(kept)]} = t{k}")
    source = _kernels.kernel_source(name, len(fmt) - 1, setup, rows, body)

    entry = _kernels.compile_cfunc(name, source, __file__, _kernels.NAMESPACE)
    return entry, struct.Struct(fmt)


register_fuser(fuse, groups)
