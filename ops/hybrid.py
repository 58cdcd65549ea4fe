"""``hybridize``: a function of ops/ arrays recorded once and replayed as one compiled plan.

``plan = hybridize(step, x, y)`` calls ``step(x, y)`` once inside the
engine's ``record(execute=False)``: every op it pushes (forward, the
gradient ops ``backward`` pushes, the update) is captured, not run, and
the capture is compiled into a :class:`depengine.plan.Plan` (fused,
bulked, dependencies precomputed).  ``plan(x2, y2)`` then pushes a copy of
each new input into the array that stood for it while recording, replays
the plan and returns new arrays holding the step's outputs.  Every call
runs the very kernels the imperative step runs, in the same order, so the
results are the same, bit for bit.

What the recorded function may do: any ops/ operation, ``autograd``,
Python control flow that depends on shapes and arguments.  What it may not:
read values (``float(loss)``, ``asnumpy()``): nothing has run while it
records.  A plan made only of ops/ operations can be saved
(:meth:`HybridPlan.save`) and loaded in another process
(:func:`ops.load_plan`).
"""

from __future__ import annotations

import numpy as np

from . import _core, autograd
from ._core import Record, push
from .array import NDArray
from .creation import array
from .math import assign, unary

__all__ = ["HybridPlan", "hybridize"]

FORMS = ("none", "single", "tuple", "list")


def hybridize(fn, *example_args, fuse: bool = True) -> HybridPlan:
    """Record ``fn(*example_args)`` once (nothing runs) and compile it into a callable plan.

    ``example_args`` are NDArrays (or NumPy arrays, copied into new ones):
    they become the plan's input arrays, into which each call copies its
    arguments.  ``fn`` returns None, an NDArray, or a tuple or list of NDArrays.
    """
    if not callable(fn):
        raise TypeError(f"hybridize: fn={fn!r} is not callable")
    if autograd.is_recording():
        raise autograd.AutogradError("hybridize inside autograd.record(): record inside the function instead")
    args = [a if isinstance(a, NDArray) else array(a) for a in example_args]
    engines = {a._engine for a in args}
    if len(engines) > 1:
        raise ValueError("hybridize: the example arguments live on different engines")
    eng = engines.pop() if engines else _core.engine()
    with _core.holding_releases(), eng.record(execute=False) as graph:
        result = fn(*args)
    form, outputs = _outputs(result)
    return HybridPlan(getattr(fn, "__name__", "plan"), args, form, outputs, graph, graph.compile(fuse=fuse))


def _outputs(result) -> tuple[str, list[NDArray]]:
    if result is None:
        return "none", []
    if isinstance(result, NDArray):
        return "single", [result]
    if isinstance(result, (tuple, list)) and all(isinstance(r, NDArray) for r in result):
        return ("tuple" if isinstance(result, tuple) else "list"), list(result)
    raise TypeError(f"hybridize: the function returned {type(result).__name__}; a plan returns None, an "
                    "NDArray, or a tuple or list of NDArrays")


class HybridPlan:
    """A recorded function: ``plan(*args)`` replays it on new inputs.

    ``inputs``: the arrays the arguments are copied into; ``outputs``: the
    arrays the recorded function returned (each call returns copies of them);
    ``state``: the arrays that existed before the plan and that it updates
    (parameters, optimiser state), in the order the recording first used
    them; ``plan``: the compiled :class:`depengine.plan.Plan`.
    """

    def __init__(self, name: str, inputs, form: str, outputs, graph, plan) -> None:
        self.name = name
        self.inputs = list(inputs)
        self.form = form
        self.outputs = list(outputs)
        self.graph = graph
        self.plan = plan
        for a in (*self.inputs, *self.outputs):
            a._ag = None  # the recording's tape is done with; a replay is never taped
        self.state = state_arrays(self.records(), self.inputs)

    def records(self) -> list:
        """The record (``ops._core.Record``) of each recorded op, in push order; None for a foreign op."""
        return [s.meta for s in self.graph.specs]

    def __call__(self, *args):
        if len(args) != len(self.inputs):
            raise TypeError(f"plan {self.name!r} takes {len(self.inputs)} arguments, got {len(args)}")
        checked = [_argument(i, new, rec) for i, (new, rec) in enumerate(zip(args, self.inputs, strict=True))]
        self._copy_in(checked)
        self.plan.run()
        results = [unary("copy", out) for out in self.outputs]
        if self.form == "none":
            return None
        if self.form == "single":
            return results[0]
        return tuple(results) if self.form == "tuple" else results

    def _copy_in(self, values) -> None:
        """Copy the arguments into the recorded inputs: one op for all those on the CPU."""
        targets, sources = [], []
        for new, rec in zip(values, self.inputs, strict=True):
            if new is rec:
                continue
            if rec.device.type != "cpu" or (isinstance(new, NDArray) and new.device.type != "cpu"):
                assign(rec, new if isinstance(new, NDArray) else array(new, rec.dtype, rec.device))
                continue
            if _core.tape is not None:  # the inputs are written in place: autograd may object
                _core.tape(Record("setitem", (new,), rec), True)
            targets.append(rec)
            sources.append(new)
        if not targets:
            return
        pairs = [(t._data, s._data if isinstance(s, NDArray) else s)
                 for t, s in zip(targets, sources, strict=True)]

        def copy_in(ctx):
            for dst, src in pairs:
                np.copyto(dst, src, casting="unsafe")
        push(copy_in, [s for s in sources if isinstance(s, NDArray)], targets, "inputs", targets[0].device)

    def save(self, path) -> None:
        """Write the plan (a JSON graph of ops/ operations and its arrays, no pickle) to ``path``."""
        from .saved import save_plan

        save_plan(self, path)

    def __repr__(self) -> str:
        return (f"<HybridPlan {self.name!r} inputs={len(self.inputs)} outputs={len(self.outputs)} "
                f"state={len(self.state)} {self.plan!r}>")


def _argument(i: int, new, rec: NDArray):
    """``new`` checked against the recorded input ``rec``: an NDArray to copy from (maybe ``rec`` itself),
    or a NumPy copy of it."""
    if isinstance(new, NDArray):
        if new.device != rec.device:
            raise ValueError(f"argument {i} is on {new.device}; the plan's input is on {rec.device}")
    else:
        try:
            host = np.asarray(new)
        except Exception as exc:
            raise TypeError(f"argument {i}: {type(new).__name__} is not an array") from exc
        if host.dtype.kind not in "biuf":
            raise TypeError(f"argument {i}: dtype {host.dtype} is not an array dtype ops/ supports")
        new = host
    if tuple(new.shape) != rec.shape:
        raise ValueError(f"argument {i} has shape {tuple(new.shape)}; the plan was recorded with {rec.shape}")
    if not np.can_cast(new.dtype, rec.dtype, casting="same_kind"):
        raise TypeError(f"argument {i}: cannot cast {new.dtype} to the input's {rec.dtype}")
    return new if isinstance(new, NDArray) else np.array(new, dtype=rec.dtype)  # a private copy


# ----------------------------------------------------------- what a plan uses
def covers(x: NDArray) -> bool:
    """Whether writing ``x`` writes every element of its memory (then its earlier values do not matter)."""
    root = x._root
    return x.size == root.size and x._offset == root._offset and (x is root or x._flat)


def first_uses(records) -> dict[int, tuple[NDArray, bool]]:
    """Per memory (id of the root array), in order of first use: ``(root, read first)``.

    A memory is *read first* when the first op naming it reads it, or writes
    only part of it: its values before the plan matter.
    """
    uses: dict[int, tuple[NDArray, bool]] = {}
    for rec in records:
        for x in rec.inputs:
            if isinstance(x, NDArray) and id(x._root) not in uses:
                uses[id(x._root)] = (x._root, True)
        root = rec.out._root
        if id(root) not in uses:
            uses[id(root)] = (root, not covers(rec.out))
    return uses


def state_arrays(records, inputs) -> list[NDArray]:
    """The memories a plan updates and whose earlier values it reads (besides its inputs)."""
    known = [r for r in records if r is not None]
    written = {id(r.out._root) for r in known}
    skip = {id(a._root) for a in inputs}
    return [root for key, (root, read_first) in first_uses(known).items()
            if read_first and key in written and key not in skip]
