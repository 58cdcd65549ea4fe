"""Reverse-mode automatic differentiation of ops/ arrays, the MXNet way.

Operations run inside ``with autograd.record():`` are *taped*: each one
whose operands depend on an array with ``attach_grad()`` leaves a node on
its result, naming the gradient rule of its operation (``ops._vjp``) and
the arrays that rule needs.  ``loss.backward()`` walks the nodes from
``loss`` back to the attached arrays and pushes, for each, the ops that
compute its operands' gradients from its result's: they are ordinary ops/
operations (asynchronous, parallel where the graph allows, visible in
profiles), and the last ones write each attached array's ``grad`` buffer.
Gradients are never taped themselves (no higher orders).

Rules of the tape:

- Only operations of the recording thread are taped, and only those with
  a float result (comparisons and argmax are not differentiable).
- An array autograd still needs (an operand a rule will read, such as
  ``x`` of ``x * w``) cannot be written in place until the tape lets go of
  it (``backward`` without ``retain_graph``, or the results that hold the
  tape are gone): such a write raises :class:`AutogradError` and pushes
  nothing.  Inside ``record()`` no in-place write may touch an array the
  tape follows at all (``y += x``: write ``y = y + x``).
- ``backward`` frees the nodes it walked unless ``retain_graph=True``; a
  second walk of freed nodes raises :class:`AutogradError`.

The front end reaches this module through one hook, ``ops._core.tape``,
which is set only while a recording or a tape that holds arrays is alive.
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager

from . import _core
from ._vjp import RULES
from .array import NDArray

__all__ = ["AutogradError", "backward", "grad", "is_recording", "pause", "record"]


class AutogradError(ValueError):
    """Autograd was asked something it cannot do (a graph freed, an array it needs written in place)."""


class _Local(threading.local):
    recording = False


_local = _Local()
_lock = threading.RLock()  # reentrant: a node's finaliser may run (garbage collection) while it is held
_recorders = 0            # threads inside record()
_needed: dict = {}        # var -> live nodes holding an array of that var for their rule


def _refresh() -> None:
    _core.tape = _hook if (_recorders or _needed) else None


@contextmanager
def record():
    """Tape the differentiable operations this thread runs inside the block."""
    global _recorders
    before = _local.recording
    _local.recording = True
    with _lock:
        _recorders += 1
        _refresh()
    try:
        yield
    finally:
        _local.recording = before
        with _lock:
            _recorders -= 1
            _refresh()


@contextmanager
def pause():
    """Run the block without taping (inside ``record()``)."""
    before = _local.recording
    _local.recording = False
    try:
        yield
    finally:
        _local.recording = before


def is_recording() -> bool:
    """Whether this thread tapes the operations it runs."""
    return _local.recording


# ----------------------------------------------------------------- entries
class Leaf:
    """The gradient buffer of an array with ``attach_grad()`` (``req``: write, add or null)."""

    __slots__ = ("grad", "req")

    def __init__(self, grad: NDArray, req: str) -> None:
        self.grad, self.req = grad, req


class Node:
    """A taped operation: what its gradient rule needs, and the entries of its array operands.

    ``args`` follow the operation's operands: the arrays the rule reads (or
    None where it reads none), and the scalars.  ``parents`` hold, per
    operand, the entry (``Leaf`` or ``Node``) its gradient goes to, or None.
    """

    __slots__ = ("args", "attrs", "device", "devices", "dtypes", "op", "out", "out_dtype", "out_shape",
                 "parents", "rule", "shapes", "vars")

    def __init__(self, op: str, inputs, out: NDArray, attrs, rule, parents) -> None:
        self.op, self.rule, self.parents, self.attrs = op, rule, parents, attrs
        arrays = [x.__class__ is NDArray for x in inputs]
        self.shapes = tuple(x.shape if a else None for x, a in zip(inputs, arrays, strict=True))
        self.dtypes = tuple(x.dtype if a else None for x, a in zip(inputs, arrays, strict=True))
        self.devices = tuple(x.device if a else None for x, a in zip(inputs, arrays, strict=True))
        keep = rule.inputs
        self.args = tuple((x if keep else None) if a else x for x, a in zip(inputs, arrays, strict=True))
        self.out = out if rule.out else None
        self.out_shape, self.out_dtype, self.device = out.shape, out.dtype, out.device
        held = [x for x in self.args if x.__class__ is NDArray] + ([out] if rule.out else [])
        self.vars = tuple({x._var: None for x in held})
        if self.vars:
            with _lock:
                for v in self.vars:
                    _needed[v] = _needed.get(v, 0) + 1
                _refresh()

    @property
    def released(self) -> bool:
        return self.parents is None

    def release(self) -> None:
        """Let go of the arrays the rule needed (they may be written in place again)."""
        if self.parents is None:
            return
        self.parents = self.args = self.out = None
        vars_, self.vars = self.vars, ()
        if vars_:
            with _lock:
                for v in vars_:
                    left = _needed[v] - 1
                    if left:
                        _needed[v] = left
                    else:
                        del _needed[v]
                _refresh()

    def __del__(self) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<autograd node {self.op} -> {self.out_shape} {'freed' if self.released else 'live'}>"


def _requires(x) -> object | None:
    """The entry a gradient of operand ``x`` goes to, or None."""
    if x.__class__ is not NDArray:
        return None
    ag = x._ag
    if ag is None or (ag.__class__ is Leaf and ag.req == "null"):
        return None
    return ag


def tape_node(op: str, inputs, out: NDArray, attrs, rule) -> None:
    """Tape ``out = op(*inputs)`` with ``rule`` if this thread records and an operand requires grad."""
    if not _local.recording or out.dtype.kind != "f":
        return
    parents = tuple(_requires(x) for x in inputs)
    if any(p is not None for p in parents):
        out._ag = Node(op, inputs, out, attrs, rule, parents)


def _hook(rec, inplace: bool) -> None:
    """``ops._core.tape``: check an in-place write, tape a result."""
    if inplace:
        _check_write(rec)
        return
    rule = RULES.get(rec.op)
    if rule is not None:
        tape_node(rec.op, rec.inputs, rec.out, rec.attrs, rule)


def _check_write(rec) -> None:
    out = rec.out
    if _local.recording and (out._ag is not None or out._root._ag is not None
                             or any(_requires(x) is not None for x in rec.inputs)):
        raise AutogradError(
            f"{rec.op} writes in place into an array of shape {out.shape} inside autograd.record(), where "
            "autograd follows it or its operands; in-place operations are not differentiable: "
            "write y = y + x instead of y += x")
    if out._var in _needed:
        gc.collect()  # a tape dropped without backward() may be waiting in a reference cycle
        if out._var in _needed:
            raise AutogradError(
                f"{rec.op} writes in place into an array of shape {out.shape} (var {out._var.name!r}) that "
                "autograd still needs to compute gradients: call backward() first (or write into a copy)")


# --------------------------------------------------------------- user API
def attach_grad(a: NDArray, grad_req: str = "write") -> None:
    """Give ``a`` a gradient buffer of zeros, which ``backward`` writes (``"write"``) or adds to."""
    from .creation import zeros

    if not isinstance(a, NDArray):
        raise TypeError(f"attach_grad: expected an NDArray, got {type(a).__name__}")
    if grad_req not in ("write", "add", "null"):
        raise ValueError(f"grad_req={grad_req!r} must be 'write', 'add' or 'null'")
    if a.dtype.kind != "f":
        raise TypeError(f"attach_grad: gradients need a float array, not {a.dtype.name}")
    a._ag = Leaf(zeros(a.shape, a.dtype, a.device), grad_req)


def grad_buffer(a: NDArray) -> NDArray:
    ag = a._ag
    if ag.__class__ is not Leaf:
        raise AutogradError(f"{a!r} has no gradient buffer: call attach_grad() on it first")
    return ag.grad


def backward(heads, head_grads=None, retain_graph: bool = False) -> None:
    """Push the gradient ops of ``heads`` (with ``head_grads``) into the attached arrays' buffers."""
    arrays, head_grads = _check_heads(heads, head_grads, "backward")
    heads = [h._ag for h in arrays]
    order = _walk(heads)
    leaves = [e for e in order if e.__class__ is Leaf and e.req != "null"]
    if not leaves:
        raise AutogradError("backward: the result does not depend on any array with attach_grad()")
    edges: dict = {}
    for e in order:
        for p in getattr(e, "parents", ()):
            if p is not None:
                edges[p] = edges.get(p, 0) + 1
    heads_set = {id(h) for h in heads}
    targets = {id(e): e.grad for e in leaves
               if e.req == "write" and edges.get(e) == 1 and id(e) not in heads_set}
    with pause():
        grads, written = _propagate(order, heads, _seeds(arrays, head_grads), targets)
        from .math import assign, binary

        for leaf in leaves:
            total = grads.get(id(leaf))
            if id(leaf) in written:
                continue
            if leaf.req == "add":
                if total is not None:
                    binary("add", leaf.grad, total, out=leaf.grad)
            else:
                assign(leaf.grad, 0.0 if total is None else total)
    if not retain_graph:
        _free(order)


def grad(heads, variables, head_grads=None, retain_graph: bool = False) -> list[NDArray]:
    """The gradients of ``heads`` with respect to ``variables`` (buffers of ``attach_grad`` untouched).

    ``variables`` are arrays with ``attach_grad()`` or results taped inside ``record()``.
    """
    single = isinstance(variables, NDArray)
    variables = [variables] if single else list(variables)
    for i, v in enumerate(variables):
        if not isinstance(v, NDArray):
            raise TypeError(f"grad: variables[{i}] is a {type(v).__name__}, not an NDArray")
        if v._ag is None:
            raise AutogradError(f"grad: variables[{i}] (shape {v.shape}) has no attach_grad() and was not "
                                "computed inside autograd.record(): it has no gradient")
    arrays, head_grads = _check_heads(heads, head_grads, "grad")
    heads = [h._ag for h in arrays]
    order = _walk(heads)
    reached = {id(e) for e in order}
    for i, v in enumerate(variables):
        if id(v._ag) not in reached:
            raise AutogradError(f"grad: the heads do not depend on variables[{i}] (shape {v.shape})")
    with pause():
        keep = {id(v._ag) for v in variables}
        grads, _ = _propagate(order, heads, _seeds(arrays, head_grads), {}, keep=keep)
        from .creation import zeros

        out = [grads.get(id(v._ag)) for v in variables]
        out = [zeros(v.shape, v.dtype, v.device) if g is None else g
               for g, v in zip(out, variables, strict=True)]
    if not retain_graph:
        _free(order)
    return out[0] if single else out


def _check_heads(heads, head_grads, what: str):
    """``(heads, head gradients)`` as lists, checked (nothing is pushed before every check passed)."""
    heads = [heads] if isinstance(heads, NDArray) else list(heads)
    if head_grads is None:
        head_grads = [None] * len(heads)
    elif isinstance(head_grads, NDArray):
        head_grads = [head_grads]
    if len(head_grads) != len(heads):
        raise ValueError(f"{what}: {len(heads)} heads but {len(head_grads)} head gradients")
    for i, (h, hg) in enumerate(zip(heads, head_grads, strict=True)):
        if not isinstance(h, NDArray):
            raise TypeError(f"{what}: heads[{i}] is a {type(h).__name__}, not an NDArray")
        if h._ag is None:
            raise AutogradError(f"{what}: the array of shape {h.shape} was not computed inside "
                                "autograd.record() from an array with attach_grad(): nothing to derive")
        if hg is None:
            if h.size != 1:
                raise ValueError(f"{what}: the result has shape {h.shape}; backward without out_grad needs a "
                                 "single-element result (pass out_grad, a gradient of that shape)")
        elif not isinstance(hg, NDArray):
            raise TypeError(f"{what}: out_grad must be an NDArray, not {type(hg).__name__}")
        elif hg.shape != h.shape or hg.device != h.device:
            raise ValueError(f"{what}: out_grad has shape {hg.shape} on {hg.device}; the result has shape "
                             f"{h.shape} on {h.device}")
    for h in heads:
        _live(h._ag)
    return heads, head_grads


def _seeds(heads, head_grads) -> list[NDArray]:
    """The gradients the walk starts from: ``out_grad``, or ones for a single-element result."""
    from .creation import full

    return [full(h.shape, 1, h.dtype, h.device) if hg is None else hg
            for h, hg in zip(heads, head_grads, strict=True)]


def _live(entry) -> None:
    if entry.__class__ is Node and entry.released:
        raise AutogradError(f"the graph through {entry.op} was freed by an earlier backward(); pass "
                            "retain_graph=True to the first backward() to walk it again")


def _walk(heads) -> list:
    """The entries reachable from ``heads``, every node before the entries of its operands."""
    post, seen = [], set()
    for h in heads:
        if id(h) in seen:
            continue
        seen.add(id(h))
        stack = [(h, iter(getattr(h, "parents", ())))]
        while stack:
            entry, parents = stack[-1]
            for p in parents:
                if p is not None and id(p) not in seen:
                    _live(p)
                    seen.add(id(p))
                    stack.append((p, iter(getattr(p, "parents", ()))))
                    break
            else:
                stack.pop()
                post.append(entry)
    post.reverse()
    return post


def _propagate(order, heads, seeds, targets: dict, keep=frozenset()):
    """Push every node's rule, heads first; ``(gradient per entry id, ids written into targets)``.

    ``targets`` maps the id of a leaf that receives one gradient to its
    buffer, which that gradient's rule may write directly.  Gradients of
    nodes in ``keep`` are kept in the result.
    """
    from .math import binary

    grads: dict = {}
    kept: dict = {}
    written: set = set()

    def add(entry, g) -> None:
        old = grads.get(id(entry))
        grads[id(entry)] = g if old is None else binary("add", old, g)

    for h, s in zip(heads, seeds, strict=True):
        add(h, s)
    for entry in order:
        if entry.__class__ is not Node:
            continue
        g = grads.pop(id(entry), None)
        if id(entry) in keep and g is not None:
            kept[id(entry)] = g
        if g is None:
            continue
        outs = tuple(None if p is None else targets.get(id(p)) for p in entry.parents)
        for p, gi, target in zip(entry.parents, entry.rule.fn(entry, g, outs), outs, strict=True):
            if p is None or gi is None:
                continue
            if target is not None and gi is target:
                written.add(id(p))
            add(p, gi)
    grads.update(kept)
    return grads, written


def _free(order) -> None:
    for e in order:
        if e.__class__ is Node:
            e.release()
