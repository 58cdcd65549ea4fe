"""CPU kernel entry points: numba cfuncs ``int32(voidptr)`` over one argument block.

Every elementwise kernel of ops/ (and every fused kernel of a recorded plan)
is a cfunc taking a single pointer to a block of 64-bit slots that holds its
whole call: the rows to do, the row length, and per operand a data address
(or a scalar's value) with its row and column strides in elements.  The
front end packs the block once when it pushes the op; running the op is one
call of the entry point on that block (``call(entry, block)``), without the
GIL: ``functools.partial(call, entry, block)`` is the op's whole body, with
no Python frame.  The same pair is what an engine that runs native op bodies
needs.

Kernels are generated from one template per (operation, work dtype, operand
classes), compiled on first use with ``cache=True`` under this file's name,
so a later process loads them from numba's cache instead of compiling them.
``kernel_events()`` says, per kernel this process used, whether it was
compiled or loaded from the cache.

Operand classes (the kernel's layout): ``C`` a row is contiguous, ``B`` a
row is one repeated value (column stride 0), ``S`` any other column stride,
``K`` a scalar held in the block.  ``exp`` is computed by a polynomial that
LLVM vectorises (libm's ``exp`` is a scalar call): within an ulp or two of
libm, the same bits in fused and unfused kernels.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["CALLS", "address", "call", "compile_cfunc", "elementwise", "kernel_events", "pack",
           "voidptr_address"]

_SIG = types.int32(types.voidptr)
_OPTS = {"nogil": True, "cache": True, "error_model": "numpy"}


# ---------------------------------------------------------------- intrinsics
@intrinsic
def as_voidptr(typingctx, addr):
    """An integer address as a ``void*`` (for ``numba.carray``)."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(addr), codegen


@intrinsic
def voidptr_address(typingctx, ptr):
    """A ``void*`` as an integer address (for pointers into a kernel's own block)."""
    if ptr != types.voidptr:
        return None

    def codegen(context, builder, sig, args):
        return builder.ptrtoint(args[0], ir.IntType(64))
    return types.int64(ptr), codegen


@intrinsic
def bits_to_f64(typingctx, bits):
    """Reinterpret an int64 as a float64."""
    if bits != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(bits), codegen


@intrinsic
def call_address(typingctx, fn, args):
    """Call the C function ``void fn(void*, ...)`` at address ``fn`` with the addresses in ``args``.

    BLAS and LAPACK routines are bound this way at run time (their address
    is an argument), so the kernels that call them can be cached.
    """
    if not isinstance(fn, types.Integer) or not isinstance(args, types.BaseTuple):
        return None
    if not all(isinstance(t, types.Integer) for t in args):
        return None
    n = len(args)

    def codegen(context, builder, sig, llargs):
        fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t] * n)
        target = builder.inttoptr(llargs[0], fnty.as_pointer())
        values = [builder.inttoptr(builder.extract_value(llargs[1], i), cgutils.voidptr_t) for i in range(n)]
        builder.call(target, values)
        return context.get_dummy_value()
    return types.void(fn, args), codegen


# ------------------------------------------------------------ vectorised exp
_E = tuple(1.0 / float(np.prod(np.arange(1, k + 1, dtype=np.float64))) for k in range(14))  # 1/k!


@numba.njit(inline="always", error_model="numpy")
def exp64(x):
    """``exp(x)`` for float64: x = k ln2 + r, |r| <= ln2/2, e^r by its degree-13 Taylor polynomial."""
    xc = x if x > -745.2 else -745.2  # (nan takes this clamp: k stays finite)
    xc = xc if xc < 709.8 else 709.8
    k = np.rint(xc * 1.4426950408889634)
    r = (xc - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10
    # Estrin's scheme: a short dependency chain, so vector lanes do not wait on each other
    r2 = r * r
    r4 = r2 * r2
    q0 = (1.0 + r) + (_E[2] + _E[3] * r) * r2
    q1 = (_E[4] + _E[5] * r) + (_E[6] + _E[7] * r) * r2
    q2 = (_E[8] + _E[9] * r) + (_E[10] + _E[11] * r) * r2
    q3 = _E[12] + _E[13] * r
    p = (q0 + q1 * r4) + (q2 + q3 * r4) * (r4 * r4)
    ki = np.int64(k)
    k1 = ki >> 1
    k2 = ki - k1
    res = p * bits_to_f64((k1 + 1023) << 52) * bits_to_f64((k2 + 1023) << 52)
    if x > 709.782712893384:
        res = np.inf
    if x < -745.1332191019412:
        res = 0.0
    if x != x:
        res = x
    return res


_EXPR = {
    "add": "x + y", "subtract": "x - y", "multiply": "x * y", "divide": "x / y", "power": "x ** y",
    "maximum": "np.maximum(x, y)", "minimum": "np.minimum(x, y)",
    "equal": "x == y", "not_equal": "x != y", "less": "x < y", "less_equal": "x <= y",
    "greater": "x > y", "greater_equal": "x >= y",
    "exp": "exp64(x)", "log": "np.log(x)", "sqrt": "np.sqrt(x)", "tanh": "np.tanh(x)",
    "abs": "np.abs(x)", "negative": "-x", "sin": "np.sin(x)", "cos": "np.cos(x)", "square": "x * x",
    "sign": "np.sign(x)",
    "copy": "x",
}


def expression(op: str, work: np.dtype) -> str:
    """The scalar expression of ``op`` over ``x`` (and ``y``), computed in ``work``."""
    if op == "exp" and work == np.float32:
        return "np.float32(exp64(np.float64(x)))"
    return _EXPR[op]


# ------------------------------------------------------------- the template
def slot_format(classes, work: np.dtype) -> str:
    """``struct`` format of a block: rows r0 r1, row length, then per operand value rs cs."""
    scalar = "d" if np.dtype(work).kind == "f" else "q"
    return "<qqq" + "".join((scalar if c == "K" else "q") + "qq" for c in classes)


def row_loads(name: str, slot: int, cls: str, dtype: np.dtype, work: np.dtype) -> tuple[list, list, str]:
    """(setup lines, per-row lines, element expression) for one operand of a kernel."""
    dt = f"np.{np.dtype(dtype).name}"
    if cls == "K":
        blk = "fb" if np.dtype(work).kind == "f" else "ib"
        return [f"{name}v = np.{np.dtype(work).name}({blk}[{slot}])"], [], f"{name}v"
    item = np.dtype(dtype).itemsize
    setup = [f"{name}p = ib[{slot}]", f"{name}rs = ib[{slot + 1}] * {item}", f"{name}cs = ib[{slot + 2}]"]
    span = {"C": "inner", "B": "1", "S": f"(inner - 1) * {name}cs + 1"}[cls]
    row = [f"{name} = numba.carray(as_voidptr({name}p + r * {name}rs), ({span},), dtype={dt})"]
    elem = {"C": f"{name}[m]", "B": f"{name}[0]", "S": f"{name}[m * {name}cs]"}[cls]
    return setup, row, elem


def kernel_source(name: str, nslots: int, setup: list, rows: list, body: list, cases=()) -> str:
    """The source of a kernel: ``setup`` once, then per row ``rows`` and per element ``body``.

    ``cases``: ``(condition, rows, body)`` loops taken instead when their condition holds.
    """
    lines = [f"def {name}(p):",
             f"    ib = numba.carray(p, ({nslots},), dtype=np.int64)",
             f"    fb = numba.carray(p, ({nslots},), dtype=np.float64)",
             "    r0 = ib[0]", "    r1 = ib[1]", "    inner = ib[2]"]
    lines += [f"    {s}" for s in setup]
    for cond, case_rows, case_body in cases:
        lines += [f"    if {cond}:", "        for r in range(r0, r1):"]
        lines += [f"            {s}" for s in case_rows]
        lines += ["            for m in range(inner):"] + [f"                {s}" for s in case_body]
        lines.append("        return 0")
    lines += ["    for r in range(r0, r1):"] + [f"        {s}" for s in rows]
    lines += ["        for m in range(inner):"] + [f"            {s}" for s in body]
    lines.append("    return 0")
    return "\n".join(lines) + "\n"


_events: dict[str, str] = {}  # kernel name -> "compiled" | "cached"
_cfuncs: dict[str, object] = {}
_lock = threading.RLock()


def compile_cfunc(name: str, source: str, filename: str, namespace: dict) -> int:
    """The entry address of the cfunc ``name`` defined by ``source`` (compiled, or loaded from the cache).

    ``filename`` is the module file the source is attributed to: numba keys
    its cache on it, so the template must live in that file.
    """
    cf = _cfuncs.get(name)
    if cf is None:
        with _lock:
            cf = _cfuncs.get(name)
            if cf is None:
                ns = dict(namespace)
                exec(compile(source, filename, "exec"), ns)
                cf = numba.cfunc(_SIG, **_OPTS)(ns[name])
                _events[name] = "cached" if cf.cache_hits else "compiled"
                _cfuncs[name] = cf
    return cf.address


def kernel_events() -> dict[str, str]:
    """Per kernel used by this process: ``"compiled"`` or ``"cached"`` (loaded from numba's cache).

    Covers the elementwise and fused cfuncs and the njit kernels ops/ calls
    (reductions, random numbers, BLAS/LAPACK tiles, the heat stencil).
    """
    from . import _blas, _cpu, stencil

    events = dict(_events)
    for disp in (*_cpu.NJIT_KERNELS, *_blas.NJIT_KERNELS, stencil._tile_step):
        for sig in disp.signatures:
            hit = disp.stats.cache_hits.get(sig, 0)
            events[f"{disp.py_func.__name__}{sig}"] = "cached" if hit else "compiled"
    return events


NAMESPACE = {"numba": numba, "np": np, "as_voidptr": as_voidptr, "exp64": exp64, "__name__": __name__}
_entries: dict[tuple, tuple[int, struct.Struct]] = {}


def elementwise(op: str, work: np.dtype, out_dtype: np.dtype, out_cls: str, sig: tuple) -> tuple:
    """``(entry address, block packer)`` of ``op`` for this layout (one per key, made once).

    ``sig``: per operand its class and, for an array, its dtype character
    (``"Cd"``, ``"Bf"``, ``"K"``); an operand of another dtype than ``work``
    is cast as it is loaded.
    """
    key = (op, work.char, out_dtype.char, out_cls, sig)  # strings: their hashes are cached
    hit = _entries.get(key)
    if hit is not None:
        return hit
    ops_sig = "".join(sig).replace("?", "z")  # bool's character is not one of a name
    name = f"_ew_{op}_{np.dtype(work).name}_{np.dtype(out_dtype).name}_{out_cls}_{ops_sig}"
    classes = tuple(s[0] for s in sig)
    fmt = slot_format(("C", *classes), work)  # the output's slots first
    setup, rows, _ = row_loads("o", 3, out_cls, out_dtype, work)
    out_elem = "o[m]" if out_cls == "C" else "o[m * ocs]"
    loads = []  # per operand: (its row line, its element's load)
    for i, (var, s) in enumerate(zip("xy", sig, strict=False)):
        dt = np.dtype(s[1]) if len(s) > 1 else work
        code, r, elem = row_loads(f"a{i}", 6 + 3 * i, s[0], dt, work)
        setup += code
        loads.append((r, f"{var} = np.{np.dtype(work).name}({{}})" if dt != work else f"{var} = {{}}", elem))
    store = f"{out_elem} = {expression(op, work)}"

    def loop(alias=None):  # (rows, body); alias: the operand read through the output (x += y)
        rs = list(rows) + [line for i, (r, _, _) in enumerate(loads) if i != alias for line in r]
        body = [load.format("o[m]" if i == alias else elem) for i, (_, load, elem) in enumerate(loads)]
        return rs, [*body, store]
    # An operand that is the output itself (in place): LLVM vectorises a loop only where it can rule
    # out overlap, and an exact overlap fails its check; read that operand through the output instead
    cases = [(f"op == a{i}p and ors == a{i}rs", *loop(i)) for i, s in enumerate(sig)
             if out_cls == "C" and s[0] == "C" and np.dtype(s[1]) == out_dtype]
    source = kernel_source(name, len(fmt) - 1, setup, *loop(), cases)
    entry = compile_cfunc(name, source, __file__, NAMESPACE)
    hit = _entries[key] = (entry, struct.Struct(fmt))
    return hit


def pack(packer: struct.Struct, values) -> bytes:
    return packer.pack(*values)


# ------------------------------------------------------------------ calling
def _ctypes_call():
    proto = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_char_p)
    fns: dict[int, object] = {}

    def call(entry: int, block: bytes, ctx=None) -> int:
        fn = fns.get(entry)
        if fn is None:
            fn = fns[entry] = proto(entry)
        return fn(block)  # ctypes releases the GIL around the call

    def address(buf) -> int:
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))
    return call, address


def _load():
    if not os.environ.get("DEPENGINE_PURE_PYTHON"):
        try:
            from . import _native
        except ImportError:
            pass
        else:
            return _native.call, _native.address, "C"
    return (*_ctypes_call(), "ctypes")


call, address, CALLS = _load()


def _warm_numba() -> None:
    """numba's CPU target loads its registries (and SciPy's BLAS) on first use: pay that at import."""
    from numba.core.registry import cpu_target

    cpu_target.target_context.refresh()


_warm_numba()


def structure_name(prefix: str, key: str) -> str:
    """A stable kernel name for a generated structure (numba caches by name)."""
    return prefix + hashlib.sha1(key.encode()).hexdigest()[:16]
