"""Saving a hybridized plan to disk and loading it back, in any process, safely.

``plan.save(path)`` writes a zip archive (``ops._plan_file``) holding
``plan.json``, a readable graph:

- ``buffers``: the memories the plan uses (dtype, shape, order), with
  ``data`` naming the ``.npy`` file of those whose values the plan reads
  before it writes them (parameters, inputs, constants);
- ``arrays``: every array an op names, as a view of a buffer (shape,
  strides and offset in elements);
- ``ops``: in push order, each an operation of a fixed registry
  (``REGISTRY``: the ops/ operations, by name) with its operands (array ids
  or scalars), the array it writes and its attributes;
- ``inputs``, ``outputs`` and ``state`` (ids of the arrays a call copies
  into, returns, and updates).

``load_plan(path)`` checks all of it before it allocates anything or
pushes anything: the format and version, ids (unique, none dangling), every
view within its buffer, each op's name, arity, shapes and dtypes, the total
size of the buffers (``max_bytes``) and each stored array against its
``.npy`` header and size.  Then it allocates the buffers, reads the stored
values, calls each op's ops/ function inside ``record(execute=False)`` (so
nothing runs) and compiles the plan.  Nothing from the file is unpickled,
evaluated or imported; a plan holding an op that is not an ops/ operation
(an arbitrary Python function) refuses to save, naming that op.
"""

from __future__ import annotations

import json
import math

import numpy as np

import depengine as de

from . import _core, _cpu, nn
from . import creation as c
from . import math as m
from ._plan_file import DTYPES, FORMAT, VERSION, PlanError, Reader, write_archive
from .array import NDArray, _c_strides
from .hybrid import HybridPlan, first_uses

__all__ = ["DEFAULT_MAX_BYTES", "REGISTRY", "PlanError", "load_plan", "save_plan"]

DEFAULT_MAX_BYTES = 4 * 2**30
MAX_NDIM = 32
_ELEMENTWISE = frozenset(_cpu.BINARY + _cpu.COMPARE + _cpu.UNARY)
# operation -> (operands, which of them must be arrays: "all", "first", "any" or "none")
_OPERANDS = {**{op: (2, "any") for op in _cpu.BINARY + _cpu.COMPARE}, **{op: (1, "all") for op in _cpu.UNARY},
             **{op: (1, "all") for op in _cpu.REDUCE}, "matmul": (2, "all"), "setitem": (1, "none"),
             "astype": (1, "all"), "full": (0, "none"), "arange": (0, "none"), "empty": (0, "none"),
             "softmax_ce": (2, "all"), "softmax_ce_grad": (3, "all")}
REGISTRY = tuple(_OPERANDS)
_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# --------------------------------------------------------------------- save
def save_plan(plan: HybridPlan, path) -> None:
    """Write ``plan`` to ``path`` (see the module docstring); raises PlanError for an op it cannot name."""
    records = plan.records()
    for i, (spec, rec) in enumerate(zip(plan.graph.specs, records, strict=True)):
        if not isinstance(rec, _core.Record) or rec.op not in REGISTRY:
            raise PlanError(f"cannot save plan {plan.name!r}: op #{i} {spec.name!r} is not an ops/ operation "
                            "a plan file can name (it runs an arbitrary Python function); a saved plan holds "
                            f"only the operations {', '.join(REGISTRY)}")
    devices = {x.device for r in records for x in (*r.inputs, r.out) if isinstance(x, NDArray)}
    devices |= {x.device for x in (*plan.inputs, *plan.outputs)}
    if len(devices) > 1:
        raise PlanError(f"cannot save plan {plan.name!r}: its arrays are on {sorted(map(str, devices))}")
    device = devices.pop() if devices else de.cpu()
    buffers: dict[int, tuple[int, NDArray]] = {}  # id(root) -> (buffer id, root)
    arrays: dict[int, tuple[int, NDArray]] = {}

    def array_id(x: NDArray) -> int:
        if id(x) not in arrays:
            root = x._root
            if id(root) not in buffers:
                _order(root, plan.name)
                buffers[id(root)] = (len(buffers), root)
            arrays[id(x)] = (len(arrays), x)
        return arrays[id(x)][0]

    ops = []
    for rec in records:
        args = [{"array": array_id(x)} if isinstance(x, NDArray) else {"scalar": _scalar(x)}
                for x in rec.inputs]
        ops.append({"op": rec.op, "args": args, "out": array_id(rec.out), "attrs": _attrs(rec)})
    inputs = [array_id(a) for a in plan.inputs]
    outputs = [array_id(a) for a in plan.outputs]
    state = [array_id(a) for a in plan.state]
    written_first = {key for key, (_, read_first) in first_uses(records).items() if not read_first}
    stored = {}
    doc_buffers = []
    for key, (bid, root) in buffers.items():
        entry = {"id": bid, "dtype": root.dtype.name, "shape": list(root.shape),
                 "order": _order(root, plan.name)}
        if key not in written_first:
            entry["data"] = f"arrays/{bid}.npy"
            stored[entry["data"]] = root.asnumpy()
        doc_buffers.append(entry)
    doc = {"format": FORMAT, "version": VERSION, "name": plan.name, "device": device.type,
           "buffers": doc_buffers,
           "arrays": [{"id": aid, "buffer": buffers[id(x._root)][0], "shape": list(x.shape),
                       "strides": list(x._strides), "offset": x._offset - x._root._offset}
                      for aid, x in arrays.values()],
           "ops": ops, "inputs": inputs, "outputs": {"form": plan.form, "arrays": outputs}, "state": state}
    write_archive(path, json.dumps(doc, indent=1).encode(), stored)


def _order(root: NDArray, name: str) -> str:
    if root._flat:
        return "C"
    if root._data is not None and root._data.flags.f_contiguous:
        return "F"
    raise PlanError(f"cannot save plan {name!r}: an array of shape {root.shape} is a strided view of memory "
                    "ops/ does not own (from DLPack); copy it first")


def _scalar(x):
    x = x.item() if isinstance(x, np.generic) else x
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def _attrs(rec) -> dict:
    if isinstance(rec, _core.Elementwise):
        return {"work": np.dtype(rec.work).name}
    if rec.op in _cpu.REDUCE:
        axis = rec.attrs["axis"]
        return {"axis": None if axis is None else int(axis), "keepdims": bool(rec.attrs["keepdims"])}
    return {k: _scalar(v) for k, v in rec.attrs.items()}


# --------------------------------------------------------------------- load
class _Meta:
    """What the checks know of an array before anything is allocated."""

    __slots__ = ("buffer", "contiguous", "dtype", "ndim", "shape", "size")

    def __init__(self, buffer, shape, dtype, contiguous) -> None:
        self.buffer, self.shape, self.dtype, self.contiguous = buffer, tuple(shape), dtype, contiguous
        self.ndim, self.size = len(shape), math.prod(shape)


def load_plan(path, device: de.Device | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> HybridPlan:
    """A :class:`HybridPlan` read from ``path``: call it like the plan that was saved.

    ``device``: where to load it (default: the CPU, or ``de.gpu(0)`` for a
    plan saved from a GPU); ``max_bytes``: the most memory its arrays may
    take.  Raises :class:`PlanError` (or ``OSError`` when the file cannot be
    opened), having allocated and pushed nothing, when anything is wrong.
    """
    if max_bytes.__class__ is not int or max_bytes < 0:
        raise ValueError(f"max_bytes={max_bytes!r} must be an int >= 0")
    reader = Reader(path)
    try:
        doc = reader.plan
        if device is None:
            device = de.cpu() if doc.device == "cpu" else de.gpu(0)
        elif not isinstance(device, de.Device):
            raise TypeError(f"device={device!r} must be de.cpu() or de.gpu(i)")
        metas = _check(reader, doc, device, max_bytes)
        return _build(reader, doc, device, metas)
    finally:
        reader.close()


def _check(reader: Reader, doc, device, max_bytes: int) -> dict[int, _Meta]:
    fail = reader.fail
    buffers = {}
    total = 0
    for b in doc.buffers:
        if b.id in buffers:
            fail(f"buffer id {b.id} is declared twice")
        if b.dtype not in DTYPES:
            fail(f"buffer {b.id} has dtype {b.dtype[:40]!r}; a plan holds {', '.join(DTYPES)}")
        dtype = np.dtype(b.dtype)
        try:
            _core.check_dtype(dtype, device)
        except TypeError as exc:
            fail(f"buffer {b.id}: {exc}")
        if len(b.shape) > MAX_NDIM or any(n < 0 for n in b.shape):
            fail(f"buffer {b.id} has shape {b.shape[:MAX_NDIM + 1]}: at most {MAX_NDIM} dimensions, "
                 "none negative")
        if b.order not in ("C", "F") or (b.order == "F" and device.type != "cpu"):
            fail(f"buffer {b.id} has order {b.order[:8]!r} (C, or F on the CPU)")
        if b.data is not None:  # its values are in the file: they must be there, and of this very size
            if b.data != f"arrays/{b.id}.npy":
                fail(f"buffer {b.id} names data {b.data[:80]!r}; its data can only be arrays/{b.id}.npy")
            reader.check_npy(b.data, dtype, tuple(b.shape), b.order == "F")
        total += math.prod(b.shape) * dtype.itemsize
        if total > max_bytes:
            fail(f"its buffers take more than max_bytes={max_bytes} bytes (at buffer {b.id}: {b.dtype} "
                 f"{b.shape[:MAX_NDIM + 1]})")
        buffers[b.id] = b
    metas: dict[int, _Meta] = {}
    for a in doc.arrays:
        if a.id in metas:
            fail(f"array id {a.id} is declared twice")
        b = buffers.get(a.buffer)
        if b is None:
            fail(f"array {a.id} is a view of buffer {a.buffer}, which is not declared")
        _check_view(reader, a, b)
        metas[a.id] = _Meta(b, a.shape, np.dtype(b.dtype), a.strides == list(_c_strides(tuple(a.shape))))
    for i, op in enumerate(doc.ops):
        _check_op(reader, i, op, metas, device)
    for what, ids in (("inputs", doc.inputs), ("outputs", doc.outputs.arrays), ("state", doc.state)):
        for k in ids:
            if k not in metas:
                fail(f"{what} names array {k}, which is not declared")
    if len(set(doc.inputs)) != len(doc.inputs):
        fail("an array is named twice in inputs")
    count = len(doc.outputs.arrays)
    if (doc.outputs.form == "none" and count) or (doc.outputs.form == "single" and count != 1):
        fail(f"outputs of form {doc.outputs.form!r} cannot hold {len(doc.outputs.arrays)} arrays")
    return metas


def _check_view(reader: Reader, a, b) -> None:
    """A view must lie inside its buffer, and name each of its elements once."""
    size = math.prod(b.shape)
    if len(a.shape) > MAX_NDIM or len(a.strides) != len(a.shape) or any(n < 0 for n in a.shape):
        reader.fail(f"array {a.id}: shape {a.shape[:MAX_NDIM + 1]} and strides {a.strides[:MAX_NDIM + 1]} "
                    "do not describe a view")
    if 0 in a.shape:
        if not 0 <= a.offset <= size:
            reader.fail(f"array {a.id}: offset {a.offset} lies outside its buffer of {size} elements")
        return
    lo = a.offset + sum(min(0, (n - 1) * s) for n, s in zip(a.shape, a.strides, strict=True))
    hi = a.offset + sum(max(0, (n - 1) * s) for n, s in zip(a.shape, a.strides, strict=True))
    if lo < 0 or hi >= size:
        reader.fail(f"array {a.id} (shape {a.shape}, strides {a.strides}, offset {a.offset}) reaches "
                    f"elements {lo}..{hi} of a buffer of {size}")
    if any(s == 0 and n > 1 for n, s in zip(a.shape, a.strides, strict=True)) or math.prod(a.shape) > size:
        reader.fail(f"array {a.id} names some elements of its buffer more than once (a stride of 0)")


def _value(reader: Reader, where: str, v, dtype: np.dtype | None = None):
    """A scalar of the file, as a Python number (or typed as ``dtype``)."""
    if isinstance(v, str):
        if v not in _SPECIAL:
            reader.fail(f"{where}: scalar {v[:40]!r} is not a number (strings: nan, inf, -inf)")
        v = _SPECIAL[v]
    if v is None:
        reader.fail(f"{where}: a scalar is missing")
    if dtype is None:
        return v
    try:
        with np.errstate(all="ignore"):
            return dtype.type(v)
    except (OverflowError, ValueError) as exc:
        reader.fail(f"{where}: scalar {v!r} does not fit {dtype.name}: {exc}")


def _check_op(reader: Reader, i: int, op, metas, device) -> None:
    where = f"op #{i} {op.op[:40]!r}"
    fail = reader.fail
    if op.op not in REGISTRY:
        fail(f"{where}: unknown operation (a plan names only {', '.join(REGISTRY)})")
    out = metas.get(op.out)
    if out is None:
        fail(f"{where}: writes array {op.out}, which is not declared")
    args = []
    for k in op.args:
        if (k.array is None) == (k.scalar is None):
            fail(f"{where}: an operand is neither an array nor a scalar (or both)")
        if k.array is not None and k.array not in metas:
            fail(f"{where}: reads array {k.array}, which is not declared")
        args.append(metas[k.array] if k.array is not None else _value(reader, where, k.scalar))
    arity, arrays = _OPERANDS[op.op]
    if len(args) != arity:
        fail(f"{where}: takes {arity} operands, the file gives {len(args)}")
    is_array = [isinstance(x, _Meta) for x in args]
    if (arrays == "all" and not all(is_array)) or (arrays == "any" and not any(is_array)):
        fail(f"{where}: {'its operands must be arrays' if arrays == 'all' else 'needs an array operand'}")
    try:
        _check_kind(where, op, args, out, device, reader)
    except (ValueError, TypeError, IndexError, np.exceptions.AxisError, NotImplementedError) as exc:
        if isinstance(exc, PlanError):
            raise
        fail(f"{where}: {exc}")


def _standin(x, dtype: np.dtype):
    """What ``math.types`` needs of an operand: a strong NumPy scalar of its dtype."""
    return x.dtype.type(0) if isinstance(x, _Meta) else dtype.type(0)


def _check_kind(where, op, args, out: _Meta, device, reader: Reader) -> None:
    name, attrs = op.op, op.attrs
    fail = reader.fail
    if name in _ELEMENTWISE:
        if attrs.work not in DTYPES:
            fail(f"{where}: attrs.work={str(attrs.work)[:40]!r} is not a dtype a plan holds")
        work = np.dtype(attrs.work)
        shape = m._broadcast(*[x.shape for x in args if isinstance(x, _Meta)])
        if m._broadcast(out.shape, shape) != out.shape:
            fail(f"{where}: a result of shape {shape} does not fit array of shape {out.shape}")
        if name in _cpu.UNARY:
            result = m.unary_dtype(name, args[0].dtype)
        else:
            work, result = m.types(name, _standin(args[0], work), _standin(args[1], work), device)
        m._gpu_check(work, device, name)
        _castable(where, result, out, reader)
    elif name in _cpu.REDUCE:
        x = args[0]
        if attrs.axis is not None and not -MAX_NDIM <= attrs.axis < MAX_NDIM:
            fail(f"{where}: axis {attrs.axis} is out of range")
        _, _, _, shape, result = m.reduce_shape(name, x.shape, x.dtype, attrs.axis, attrs.keepdims)
        m._gpu_check(x.dtype if x.dtype.kind == "f" else np.float64, device, name)
        if tuple(shape) != out.shape:
            fail(f"{where}: the result has shape {tuple(shape)}, array {op.out} has shape {out.shape}")
        _castable(where, result, out, reader)
    elif name == "matmul":
        a, b = args
        if device.type == "gpu" and (a.ndim > 2 or b.ndim > 2):
            fail(f"{where}: matmul on a GPU takes 1-d and 2-d operands")
        shape = m.matmul_shape(a, b)
        if tuple(shape) != out.shape:
            fail(f"{where}: the result has shape {tuple(shape)}, array {op.out} has shape {out.shape}")
        _castable(where, m.matmul_dtype(a.dtype, b.dtype), out, reader)
    elif name in ("softmax_ce", "softmax_ce_grad"):
        x, labels = args[0], args[1]
        rows = x.shape[:1]
        if x.ndim != 2 or x.dtype.kind != "f" or labels.shape != rows or (name == "softmax_ce_grad" and (
                args[2].shape != rows or args[2].dtype != x.dtype)):
            fail(f"{where}: takes float rows (n, c), n labels{' and n gradients' if len(args) == 3 else ''}")
        if labels.dtype.kind not in ("f" if device.type == "gpu" else "biuf"):
            fail(f"{where}: labels of dtype {labels.dtype.name} on {device}")
        if out.shape != (x.shape if name == "softmax_ce_grad" else rows) or out.dtype != x.dtype:
            fail(f"{where}: writes {out.dtype.name} {out.shape}, not what it makes")
    elif name in ("setitem", "astype"):
        x = args[0]
        xs = x.shape if isinstance(x, _Meta) else ()
        if m._broadcast(out.shape, xs) != out.shape or (name == "astype" and xs != out.shape):
            fail(f"{where}: a value of shape {xs} does not fit array of shape {out.shape}")
        if name == "astype" and not isinstance(x, _Meta):
            fail(f"{where}: astype converts an array")
    else:  # full, arange, empty: they write the whole array
        if device.type == "gpu" and not out.contiguous:
            fail(f"{where}: on a GPU it writes only a contiguous array")
        if name == "full":
            _value(reader, where, attrs.value, out.dtype)
        elif name == "arange":
            start, step = _value(reader, where, attrs.start), _value(reader, where, attrs.step)
            finite = all(not isinstance(v, bool) and math.isfinite(v) for v in (start, step))
            if out.ndim != 1 or not step or not finite:
                fail(f"{where}: arange writes a 1-d array from a finite start and a finite, non-zero step")


def _castable(where, result, out: _Meta, reader: Reader) -> None:
    if not np.can_cast(result, out.dtype, casting="same_kind"):
        reader.fail(f"{where}: its {np.dtype(result).name} result cannot be written into {out.dtype.name}")


def _build(reader: Reader, doc, device, metas) -> HybridPlan:
    """Allocate the buffers, read the stored values, replay the ops into a plan (nothing runs)."""
    roots = {}
    for b in doc.buffers:
        dtype, shape = np.dtype(b.dtype), tuple(b.shape)
        if b.data is None and device.type != "cpu":
            roots[b.id] = NDArray._empty(shape, dtype, device, name=f"buffer {b.id}")
            continue
        host = np.empty(shape, dtype, order=b.order)
        if b.data is not None:
            into = memoryview(host.ravel(order="K").view(np.uint8))
            reader.read_npy(b.data, dtype, shape, b.order == "F", into)
        roots[b.id] = c.array(host, device=device) if device.type != "cpu" else NDArray._wrap_host(
            _core.engine(), host, f"buffer {b.id}", device)
    arrays = {}
    for a in doc.arrays:
        root = roots[a.buffer]
        shape, strides = tuple(a.shape), tuple(a.strides)
        if shape == root.shape and strides == root._strides and a.offset == 0:
            arrays[a.id] = root
            continue
        data = None
        if root._data is not None:
            flat = root._data.ravel(order="K")
            item = root.dtype.itemsize
            data = np.lib.stride_tricks.as_strided(flat[a.offset:] if a.offset < flat.size else flat[:0],
                                                   shape, tuple(s * item for s in strides))
        arrays[a.id] = root._view(shape, strides, a.offset, data)
    eng = next(iter(roots.values()))._engine if roots else _core.engine()
    with _core.holding_releases(), eng.record(execute=False) as graph:
        for i, op in enumerate(doc.ops):
            try:
                _replay(reader, op, arrays, device)
            except (ValueError, TypeError, NotImplementedError, IndexError) as exc:
                reader.fail(f"op #{i} {op.op!r}: {exc}")
    inputs = [arrays[k] for k in doc.inputs]
    outputs = [arrays[k] for k in doc.outputs.arrays]
    plan = HybridPlan(doc.name, inputs, doc.outputs.form, outputs, graph, graph.compile())
    if [id(a) for a in plan.state] != [id(arrays[k]._root) for k in doc.state]:
        reader.fail("its state list does not name the arrays its ops update")
    return plan


def _replay(reader: Reader, op, arrays, device) -> None:
    """Push ``op`` (checked) through its ops/ function, into its declared output array."""
    out = arrays[op.out]
    name, attrs = op.op, op.attrs
    work = np.dtype(attrs.work) if attrs.work in DTYPES else None
    args = [arrays[k.array] if k.array is not None else _value(reader, name, k.scalar, work) for k in op.args]
    if name in _cpu.UNARY:
        m.unary(name, args[0], out=out)
    elif name in _ELEMENTWISE:
        m.binary(name, args[0], args[1], out=out)
    elif name in _cpu.REDUCE:
        m.reduce(name, args[0], attrs.axis, attrs.keepdims, out=out)
    elif name == "matmul":
        m.matmul(args[0], args[1], out=out)
    elif name == "setitem":
        m.assign(out, args[0])
    elif name == "astype":
        m.astype(args[0], out.dtype, out=out)
    elif name == "softmax_ce":
        nn.softmax_ce(args[0], args[1], out=out)
    elif name == "softmax_ce_grad":
        nn.softmax_ce_grad(args[0], args[1], args[2], out=out)
    elif name == "full":
        c.fill(out, _value(reader, name, attrs.value, out.dtype))
    elif name == "arange":
        c.arange_into(out, _value(reader, name, attrs.start), _value(reader, name, attrs.step))
    elif device.type != "cpu":  # empty: CPU memory exists already
        c.allocate(out)

