"""NDArray: an array whose every operation is pushed to the engine and returns at once.

An array owns one engine var and its storage, held by a *store* (CPU: see
``ops.memory``; GPU: a ``DeviceStore``).  Views (basic slicing, reshape,
transpose) share their parent's var and store, so they are ordered with it;
the memory goes when the array, its views and the ops using them are gone.
Reading the values (``asnumpy``, ``__array__``, ``float()``) waits for
pending writes.
"""

from __future__ import annotations

import math
import operator

import numpy as np

import depengine as de

from . import _core, memory

__all__ = ["NDArray"]


class NDArray:
    """An asynchronous n-dimensional array on ``de.cpu()`` or ``de.gpu(i)``.

    Create arrays with ``ops.array``, ``ops.zeros``, ``ops.ones``, ``ops.full``,
    ``ops.arange``, ``ops.empty`` or ``ops.random``.
    """

    __slots__ = ("__weakref__", "_addr", "_ag", "_base", "_data", "_engine", "_flat", "_offset", "_store",
                 "_strides", "_var", "device", "dtype", "shape")
    # _addr: CPU address of element (0, ..., 0); _flat: C-contiguous; _offset, _strides: in elements;
    # _ag: autograd's entry (ops.autograd: the gradient buffer of attach_grad, or the taped op that made it)
    __array_priority__ = 100.0  # NumPy defers mixed operations to our reflected operators

    def __init__(self, *args, **kwargs) -> None:
        raise TypeError("NDArray cannot be created directly; use ops.array, ops.zeros, ops.empty, ...")

    @classmethod
    def _new(cls, eng, var, shape, dtype, device, data=None, store=None, offset=0, strides=None,
             base=None, addr=0) -> NDArray:
        a = object.__new__(cls)
        a._engine = eng
        a._var = var
        a.shape = shape = tuple(shape)
        a.dtype = np.dtype(dtype)
        a.device = device
        a._data = data
        a._store = store
        a._offset = offset
        c_strides = _c_strides(shape)
        a._strides = c_strides if strides is None else strides
        a._flat = a._strides == c_strides
        a._base = base
        a._ag = None
        if not addr and data is not None:  # host memory: kernels get the address of element (0, ..., 0)
            addr = data.__array_interface__["data"][0]
        a._addr = addr
        return a

    @classmethod
    def _empty(cls, shape, dtype, device, name: str = "array", owner: int | None = None,
               data: np.ndarray | None = None) -> NDArray:
        """A new owner array (storage allocated now on CPU, by its first writer on GPU).

        ``owner``: its rank on an mpi engine (default 0); ``data``: a private host array to use
        as its storage.
        """
        _core.flush_releases()
        eng = _core.engine()
        dt = _core.check_dtype(dtype, device)
        if eng.type == "mpi":  # every rank holds the buffer; the owner's is authoritative
            if device.type != "cpu":
                raise ValueError(f"arrays of an mpi engine live on de.cpu(), not {device}")
            buf = np.empty(shape, dt) if data is None else data
            var = eng.new_var(name, owner=0 if owner is None else owner, buffer=buf,
                              uninitialized=data is None)
            return cls._new(eng, var, shape, dt, device, data=buf)
        if owner not in (None, 0):
            raise ValueError(f"owner={owner!r}: arrays have owner ranks on Engine('mpi') only")
        var = eng.new_var(name)
        if device.type == "cpu":
            return cls._cpu_owner(eng, var, shape, dt, device)
        if eng.type != "perdevice":
            raise ValueError(f"GPU arrays need Engine('perdevice'); ops/ uses a {eng.type!r} engine "
                             "(set DEPENGINE_ENGINE=perdevice or ops.set_engine)")
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dt.itemsize)
        store = _core.DeviceStore(device.index, nbytes)
        store.owner = (eng, var)
        return cls._new(eng, var, shape, dt, device, store=store)

    @classmethod
    def _cpu_owner(cls, eng, var, shape, dtype, device, size=None, strides=None) -> NDArray:
        """A new C-contiguous CPU array (a pooled buffer when it is large); the fast path of ``_empty``.

        ``size`` and ``strides`` (in elements), when the caller knows them, save computing them again."""
        a = object.__new__(cls)
        a._engine = eng
        a._var = var
        a.shape = shape
        a.dtype = dtype
        a.device = device
        if size is None:
            size = 1
            for n in shape:
                size *= n
        a._data, a._store, a._addr = memory.alloc(shape, dtype, size, eng._drain_records)
        a._offset = 0
        a._strides = _c_strides(shape) if strides is None else strides
        a._flat = True
        a._base = None
        a._ag = None
        return a

    @classmethod
    def _wrap_host(cls, eng, data: np.ndarray, name: str, device) -> NDArray:
        """An owner CPU array over the NumPy array ``data`` (kept, never copied)."""
        item = data.dtype.itemsize
        if any(s % item for s in data.strides):
            data = data.copy()
        strides = tuple(s // item for s in data.strides)
        return cls._new(eng, eng.new_var(name), data.shape, data.dtype, device, data=data, store=data,
                        strides=strides, addr=data.__array_interface__["data"][0])

    # -------------------------------------------------------------- basics
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def owner(self) -> int:
        """The rank that owns this array's data (0 except on an mpi engine)."""
        return self._engine.owner_of(self._var) if self._engine.type == "mpi" else 0

    @property
    def var(self) -> de.Var:
        """The engine var that orders every op on this array (shared with its views)."""
        return self._var

    @property
    def _root(self) -> NDArray:
        return self if self._base is None else self._base

    @property
    def _contiguous(self) -> bool:
        return self._flat

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"<NDArray shape={self.shape} dtype={self.dtype.name} device={self.device} "
                f"var={self._var.name!r} v{self._var.version}>")

    # ------------------------------------------------------- waiting, reading
    def wait_to_read(self) -> NDArray:
        """Block until every write to this array pushed so far has finished (raises its failure)."""
        _core.flush_releases()
        self._engine.wait_for_var(self._var)
        return self

    def asnumpy(self) -> np.ndarray:
        """A NumPy copy of the values (waits for pending writes).

        On an mpi engine it gathers: collective, every rank gets the values.
        """
        if self._engine.type == "mpi":
            _core.flush_releases()
            self._engine.fetch(self._var)  # the latest version lands in this rank's buffer too
            return np.array(self._data, copy=True)
        if self.device.type == "cpu":
            self.wait_to_read()
            return np.array(self._data, copy=True)
        host = self.copyto(de.cpu())
        return host.wait_to_read()._data

    def __array__(self, dtype=None, copy=None):
        out = self.asnumpy()
        return out if dtype is None else out.astype(dtype, copy=False)

    def item(self):
        if self.size != 1:
            raise ValueError(f"item() needs an array of one element, not shape {self.shape}")
        if self.device.type == "cpu" and self._engine.type != "mpi":  # no copy of the one element
            self.wait_to_read()
            return self._data.reshape(()).item()
        return self.asnumpy().reshape(()).item()

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __bool__(self) -> bool:
        return bool(self.item())

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    # ------------------------------------------------------------- views
    def _view(self, shape, strides, offset, data=None) -> NDArray:
        root = self._root
        addr = root._addr + (offset - root._offset) * self.dtype.itemsize if data is not None else 0
        return NDArray._new(self._engine, self._var, shape, self.dtype, self.device, data=data,
                            store=self._store, offset=offset, strides=strides, base=root, addr=addr)

    def reshape(self, *shape) -> NDArray:
        """A view with a new shape (a copy when the layout does not allow a view)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = _resolve_shape(shape, self.size)
        if self.device.type == "cpu":
            try:
                data = self._data.reshape(shape, copy=False)
            except ValueError:
                return self.copy().reshape(shape)
            item = self.dtype.itemsize
            return self._taped("reshape", self._view(shape, tuple(s // item for s in data.strides),
                                                     self._offset, data), shape)
        if not self._contiguous:
            return self.copy().reshape(shape)
        return self._taped("reshape", self._view(shape, _c_strides(shape), self._offset), shape)

    def _taped(self, op: str, view: NDArray, arg) -> NDArray:
        """``view`` of this array, shown to autograd (views push nothing, so they call its hook here)."""
        if _core.tape is not None:
            _core.tape(_core.Record(op, (self,), view, {"arg": arg}), False)
        return view

    def transpose(self, *axes) -> NDArray:
        if not axes or axes == (None,):
            axes = tuple(reversed(range(self.ndim)))
        elif len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        axes = tuple(_normalize_axis(a, self.ndim) for a in axes)
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"axes {axes} are not a permutation of {tuple(range(self.ndim))}")
        shape = tuple(self.shape[a] for a in axes)
        strides = tuple(self._strides[a] for a in axes)
        data = self._data.transpose(axes) if self._data is not None else None
        return self._taped("transpose", self._view(shape, strides, self._offset, data), axes)

    @property
    def T(self) -> NDArray:
        return self.transpose()

    def __getitem__(self, key) -> NDArray:
        shape, strides, offset = _index_view(self.shape, self._strides, self._offset, key)
        data = None
        if self._data is not None:
            data = self._data[_as_tuple(key)]
            if not isinstance(data, np.ndarray):  # a scalar element: keep a 0-d view
                data = self._data[(*_as_tuple(key), Ellipsis)]
        return self._taped("getitem", self._view(shape, strides, offset, data), key)

    def __setitem__(self, key, value) -> None:
        _math.assign(self[key], value)

    # ----------------------------------------------------------- copies
    def copy(self) -> NDArray:
        return _math.unary("copy", self)

    def astype(self, dtype) -> NDArray:
        return _math.astype(self, dtype)

    def copyto(self, target) -> NDArray:
        """A copy on device ``target``, or into the existing array ``target``; returns the copy."""
        from .transfer import copyto

        return copyto(self, target)

    # ------------------------------------------------------------ autograd
    def attach_grad(self, grad_req: str = "write") -> None:
        """Give this array a gradient buffer (zeros), filled by ``backward`` (see ``ops.autograd``)."""
        from .autograd import attach_grad

        attach_grad(self, grad_req)

    @property
    def grad(self) -> NDArray:
        """The gradient buffer of ``attach_grad``."""
        from .autograd import grad_buffer

        return grad_buffer(self)

    def backward(self, out_grad: NDArray | None = None, retain_graph: bool = False) -> None:
        """Push the gradient ops of this result into the buffers of the arrays it depends on."""
        from .autograd import backward

        backward([self], None if out_grad is None else [out_grad], retain_graph)

    def detach(self) -> NDArray:
        """A view of the same memory that autograd does not follow."""
        return self._view(self.shape, self._strides, self._offset, self._data)

    # ------------------------------------------------------------- interop
    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        from .interop import to_dlpack

        return to_dlpack(self, stream=stream, max_version=max_version)

    def __dlpack_device__(self):
        return (1, 0) if self.device.type == "cpu" else (2, self.device.index)

    @property
    def __cuda_array_interface__(self) -> dict:
        from .interop import cuda_array_interface

        return cuda_array_interface(self)

    # --------------------------------------------------------- reductions
    def sum(self, axis=None, keepdims=False) -> NDArray:
        return _math.reduce("sum", self, axis, keepdims)

    def mean(self, axis=None, keepdims=False) -> NDArray:
        return _math.reduce("mean", self, axis, keepdims)

    def max(self, axis=None, keepdims=False) -> NDArray:
        return _math.reduce("max", self, axis, keepdims)

    def min(self, axis=None, keepdims=False) -> NDArray:
        return _math.reduce("min", self, axis, keepdims)

    def argmax(self, axis=None) -> NDArray:
        return _math.reduce("argmax", self, axis, False)

    def __matmul__(self, other) -> NDArray:
        return _math.matmul(self, other)

    def __rmatmul__(self, other) -> NDArray:
        return _math.matmul(other, self)

    def dot(self, other) -> NDArray:
        return _math.dot(self, other)


def _c_strides(shape) -> tuple[int, ...]:
    strides = _C_STRIDES.get(shape)
    if strides is None:
        acc, out = 1, []
        for n in reversed(shape):
            out.append(acc)
            acc *= max(n, 1)
        strides = tuple(reversed(out))
        if len(_C_STRIDES) < 4096:
            _C_STRIDES[shape] = strides
    return strides


_C_STRIDES: dict[tuple, tuple] = {}


def _resolve_shape(shape, size: int) -> tuple[int, ...]:
    shape = tuple(operator.index(s) for s in shape)
    if shape.count(-1) > 1:
        raise ValueError("only one dimension of a reshape can be -1")
    known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
    if -1 in shape:
        if known == 0 or size % known:
            raise ValueError(f"cannot reshape an array of size {size} into shape {shape}")
        shape = tuple(size // known if s == -1 else s for s in shape)
    if int(np.prod(shape, dtype=np.int64)) != size or any(s < 0 for s in shape):
        raise ValueError(f"cannot reshape an array of size {size} into shape {shape}")
    return shape


def _normalize_axis(axis, ndim: int) -> int:
    axis = operator.index(axis)
    if not -ndim <= axis < max(ndim, 1) or (ndim == 0 and axis not in (0, -1)):
        raise np.exceptions.AxisError(axis, ndim)
    return axis % ndim if ndim else 0


def _as_tuple(key) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def _index_view(shape, strides, offset, key):
    """Shape, strides and offset (in elements) of ``x[key]`` for basic indexing."""
    key = _as_tuple(key)
    for k in key:
        if not (k is None or k is Ellipsis or isinstance(k, slice) or _is_int(k)):
            raise TypeError(f"index {k!r}: only integers, slices, ... and None are supported "
                            "(advanced indexing: use asnumpy())")
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    n_real = sum(k is not None and k is not Ellipsis for k in key)
    if n_real > len(shape):
        raise IndexError(f"too many indices for array: array is {len(shape)}-dimensional, "
                         f"but {n_real} were indexed")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - n_real) + key[i + 1:]
    else:
        key = key + (slice(None),) * (len(shape) - n_real)
    out_shape, out_strides = [], []
    dim = 0
    for k in key:
        if k is None:
            out_shape.append(1)
            out_strides.append(0)
            continue
        n, st = shape[dim], strides[dim]
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            length = len(range(start, stop, step))
            offset += start * st if length else 0
            out_shape.append(length)
            out_strides.append(st * step)
        else:
            i = operator.index(k)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis {dim} with size {n}")
            offset += (i % n) * st
        dim += 1
    return tuple(out_shape), tuple(out_strides), offset


def _is_int(k) -> bool:
    try:
        operator.index(k)
    except TypeError:
        return False
    return not isinstance(k, (bool, np.bool_))


_math = None  # ops.math, once it is imported (it imports this module): set by _install_operators


def _install_operators() -> None:
    global _math
    from . import math as m

    _math = m

    front = m.front_op  # the C fast path (ops/_front.c), or None: every call takes ops.math's
    into = m.front_into

    def binary(op, reflected=False):
        if front is None:
            if reflected:
                return lambda self, other: m.binary(op, other, self)
            return lambda self, other: m.binary(op, self, other)
        if reflected:
            def method(self, other):
                r = front(op, other, self)
                return m.binary(op, other, self) if r is None else r
        else:
            def method(self, other):
                r = front(op, self, other)
                return m.binary(op, self, other) if r is None else r
        return method

    def unary(op):
        if front is None:
            return lambda self: m.unary(op, self)

        def method(self):
            r = front(op, self)
            return m.unary(op, self) if r is None else r
        return method

    def inplace(op):
        def method(self, other):
            if into is None or into(op, self, other) is None:  # (the C path pushes it, or not)
                m.binary(op, self, other, out=self)
            return self
        return method

    for dunder, op in (("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("truediv", "divide"),
                       ("pow", "power")):
        setattr(NDArray, f"__{dunder}__", binary(op))
        setattr(NDArray, f"__r{dunder}__", binary(op, reflected=True))
        setattr(NDArray, f"__i{dunder}__", inplace(op))
    for dunder, op in (("eq", "equal"), ("ne", "not_equal"), ("lt", "less"), ("le", "less_equal"),
                       ("gt", "greater"), ("ge", "greater_equal")):
        setattr(NDArray, f"__{dunder}__", binary(op))
    NDArray.__neg__ = unary("negative")
    NDArray.__abs__ = unary("abs")
    NDArray.__pos__ = lambda self: self
    NDArray.__hash__ = None
    for name in ("exp", "log", "sqrt", "tanh", "sin", "cos", "square", "abs", "sign"):
        setattr(NDArray, name, unary(name))
