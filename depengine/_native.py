"""Native op bodies: ``de.native(fn, arg)``, a C function the engine runs without the GIL.

``fn`` has the C signature ``int32_t fn(void *arg)``: a numba ``cfunc`` of
signature ``int32(voidptr)``, a ctypes function pointer of that signature,
or an integer address.  ``arg`` is None (NULL), an integer address, or an
object exporting a contiguous buffer (its address is passed; the op keeps the
object, and the buffer export, alive until it has run).  A non-zero return
fails the op with :class:`NativeError`.

The compiled core calls the function from a worker thread that does not hold
the GIL, and grants the op's successors in C.  The pure-Python engine calls
it through ctypes, which releases the GIL for the call.  An integer address
is trusted as it is: the engine cannot check what it points at, and calling a
wrong address crashes the process.
"""

from __future__ import annotations

import ctypes

import numpy as np

from ._errors import DeadlockError, DepengineError, EngineClosedError, VarDeletedError

__all__ = ["NATIVE_TYPES", "Native", "NativeError", "native"]

_PROTO = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)


class NativeError(DepengineError, RuntimeError):
    """A native op body returned a non-zero code; ``code`` is that value."""

    def __init__(self, code: int, name: str = "native op") -> None:
        super().__init__(f"{name} returned {code}")
        self.code = code


class Native:
    """An op body made by :func:`native`: push it like any function.

    ``address`` is the C function's address, ``arg_address`` what it receives
    (0 for NULL), ``name`` the name its ops take when pushed without one.
    """

    __slots__ = ("_call", "address", "arg", "arg_address", "name")

    def __init__(self, *args, **kwargs) -> None:
        raise TypeError("Native cannot be created directly; use depengine.native(fn, arg)")

    def __call__(self, ctx) -> None:
        """Run the function with the GIL released (ctypes); a non-zero return raises NativeError."""
        code = self._call(self.arg_address or None)
        if code:
            raise NativeError(code, f"native op {self.name!r}")

    def __repr__(self) -> str:
        return f"<Native {self.name!r} at {self.address:#x} arg={self.arg_address:#x}>"


def native(fn, arg=None) -> Native:
    """An op body running the C function ``fn(arg)``; see the module's documentation."""
    address, name = _function_address(fn)
    if _C is not None and arg.__class__ is bytes:  # immutable and never moved: the core reads its address
        return _C.make_native(address, None, name, arg)
    keep, arg_address = _argument(arg)
    if _C is not None:  # the compiled core's form: it reads the function and argument directly
        return _C.make_native(address, arg_address, name, keep)
    body = object.__new__(Native)
    body.address = address
    body.name = name
    body.arg = keep
    body.arg_address = arg_address
    body._call = _PROTO(address)
    return body


def _function_address(fn) -> tuple[int, str]:
    if fn.__class__ is int:
        if fn <= 0:
            raise ValueError(f"native: function address {fn} must be a positive integer")
        return fn, f"native@{fn:#x}"
    sig = getattr(fn, "_sig", None)
    if sig is not None and hasattr(fn, "address"):  # a numba cfunc
        from numba import types

        if sig.return_type != types.int32 or tuple(sig.args) != (types.voidptr,):
            raise TypeError(f"native: cfunc {getattr(fn, '__name__', fn)!r} has signature {sig}; "
                            "expected int32(voidptr)")
        return fn.address, getattr(fn, "__name__", "native")
    if isinstance(fn, ctypes._CFuncPtr):
        kind = type(fn)
        if kind._restype_ is not ctypes.c_int32 or tuple(kind._argtypes_ or ()) != (ctypes.c_void_p,):
            restype = getattr(kind._restype_, "__name__", kind._restype_)
            args = [getattr(a, "__name__", a) for a in (kind._argtypes_ or ())]
            raise TypeError(f"native: ctypes function of signature {restype}({', '.join(args)}); "
                            "expected c_int32(c_void_p)")
        address = ctypes.cast(fn, ctypes.c_void_p).value
        if not address:
            raise ValueError("native: the ctypes function pointer is NULL")
        return address, getattr(fn, "__name__", None) or f"native@{address:#x}"
    raise TypeError(f"native: {fn!r} is not a C function: give a numba cfunc of signature int32(voidptr), "
                    "a ctypes CFUNCTYPE(c_int32, c_void_p) pointer, or an integer address")


def _argument(arg) -> tuple[object, int]:
    """(what the op keeps alive, the address passed) for ``arg``."""
    if arg is None:
        return None, 0
    if arg.__class__ is int:
        if arg < 0:
            raise ValueError(f"native: argument address {arg} must be >= 0")
        return None, arg
    try:
        view = memoryview(arg)
    except TypeError:
        raise TypeError(f"native: argument {type(arg).__name__} is neither None, an integer address, "
                        "nor an object exporting a buffer") from None
    if not view.contiguous:
        view.release()
        raise ValueError(f"native: the buffer of {type(arg).__name__} is not contiguous; "
                         "pass a contiguous array (numpy.ascontiguousarray)")
    if view.nbytes == 0:
        return (arg, view), 0
    if view.c_contiguous:
        address = np.frombuffer(view if view.format == "B" and view.ndim == 1 else view.cast("B"),
                                dtype=np.uint8).ctypes.data
    else:  # Fortran order: numpy reads the strides and starts at the first byte
        address = np.asarray(view).ctypes.data
    return (arg, view), address


def _c_native():
    """depengine._core, when built and not set aside by DEPENGINE_PURE_PYTHON, else None."""
    import os

    if os.environ.get("DEPENGINE_PURE_PYTHON"):
        return None
    try:
        from . import _core
    except ImportError:
        return None
    return _core


def configure_core(core) -> None:
    """Tell the compiled core what it raises and which class is the Python form of a native body."""
    core.configure(EngineClosedError, VarDeletedError, DeadlockError, NativeError, Native)


_C = _c_native()
if _C is not None:  # even when a Python engine is the first to run a native body
    configure_core(_C)
# what native() may return: the Python class, and the compiled core's C form
NATIVE_TYPES = (Native,) if _C is None else (Native, _C.Native)


def refuse_async(fn) -> None:
    """A native body cannot call ``done``: ``push_async`` refuses it before anything is pushed."""
    if fn.__class__ in NATIVE_TYPES:
        raise TypeError(f"push_async: {fn!r} is a native body, which cannot call done(); push it with push()")
