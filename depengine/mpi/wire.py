"""What travels between ranks, and how a received message is checked before it is used.

A transfer of one var version carries the var's bytes and, when that version
failed, a description of the failure: the receiver's copy then holds the same
bytes as the owner's and fails with the same exception.  It is a header
message, followed (for large transfers) by the failure description and the
bytes as messages of their own on the same tag; MPI keeps them in order.
The header is a fixed little-endian struct: magic, kind (data or failure),
the var's serial and version, dtype, order, shape, the sizes of the bytes and
of the description, and whether both travel inline in the header's message
(small transfers: one message).  A failure description is JSON: the
exception's type, arguments, message, remote traceback text, and the rank
and op that raised it.

Receiving never trusts a message.  The header is checked against the var the
receiver expects (serial, version, dtype, shape, size) before one byte reaches
the var's buffer, a payload is received only when MPI reports exactly the
buffer's size, and a failure is rebuilt from plain data: nothing is unpickled
or imported, and an exception type is looked up only among modules this
process has already imported.
"""

from __future__ import annotations

import json
import struct
import sys
import traceback

import numpy as np

from .errors import RemoteError, RemoteTraceback, TransferError

__all__ = ["HEADER_SIZE", "INLINE_MAX", "MAX_BODY", "Header", "decode_header", "encode", "failure_body",
           "failure_from_body", "mismatch"]

MAGIC = b"DEP1"
DATA, FAILURE = 1, 2
FLAG_INLINE = 1
MAX_DIMS = 16
_STRUCT = struct.Struct("<4sBBBB8sQQQQ" + "Q" * MAX_DIMS)
HEADER_SIZE = _STRUCT.size
INLINE_MAX = 4096          # bytes and description up to this size travel in the header's message
MAX_BODY = 1 << 20         # the largest failure description a receiver accepts
_MAX_TEXT = 64 * 1024      # traceback text kept per failure (its head and tail)


class Header:
    """A decoded transfer header."""

    __slots__ = ("body", "dtype", "gen", "inline", "kind", "nbytes", "order", "serial", "shape")


def dtype_code(dtype: np.dtype) -> bytes:
    """The dtype's code in a header; raises ValueError for one that cannot travel."""
    if dtype.hasobject:
        raise ValueError(f"dtype {dtype} holds Python objects: its bytes cannot be sent to another rank")
    code = dtype.str.encode("ascii")
    if len(code) > 8:
        raise ValueError(f"dtype {dtype} (code {dtype.str!r}) is not supported by the mpi engine")
    return code


def encode(serial: int, gen: int, buffer: np.ndarray, order: str, raw: np.ndarray, body: bytes = b"",
           whole: bool = False) -> list:
    """The messages of a transfer of ``buffer`` (``raw``: its bytes) with failure description ``body``
    (empty for a clean version): one message when everything fits ``INLINE_MAX``, or when ``whole``."""
    inline = whole or len(body) + raw.nbytes <= INLINE_MAX
    dims = list(buffer.shape) + [0] * (MAX_DIMS - buffer.ndim)
    head = _STRUCT.pack(MAGIC, FAILURE if body else DATA, buffer.ndim, 0 if order == "C" else 1,
                        FLAG_INLINE if inline else 0, dtype_code(buffer.dtype), serial, gen, raw.nbytes,
                        len(body), *dims)
    if inline:
        return [head + body + raw.tobytes()]
    return [head, body, raw] if body else [head, raw]


def decode_header(data: bytes | bytearray) -> Header:
    """The header at the start of ``data``; raises TransferError when it is not one."""
    if len(data) < HEADER_SIZE:
        raise TransferError(f"a message of {len(data)} bytes is too short for a transfer header "
                            f"({HEADER_SIZE} bytes)")
    magic, kind, ndim, order, flags, dtype, serial, gen, nbytes, body, *dims = _STRUCT.unpack_from(data)
    if magic != MAGIC:
        raise TransferError(f"a message that is not a depengine transfer (magic {magic!r})")
    if kind not in (DATA, FAILURE) or ndim > MAX_DIMS or order > 1:
        raise TransferError(f"a corrupt transfer header (kind {kind}, ndim {ndim}, order {order})")
    h = Header()
    h.kind = kind
    h.serial = serial
    h.gen = gen
    h.nbytes = nbytes
    h.body = body
    h.inline = bool(flags & FLAG_INLINE)
    h.order = "CF"[order]
    h.shape = tuple(dims[:ndim])
    try:
        h.dtype = np.dtype(dtype.rstrip(b"\0").decode("ascii"))
    except (UnicodeDecodeError, TypeError, ValueError):
        raise TransferError(f"a transfer header with an unknown dtype code {dtype!r}") from None
    if (kind == FAILURE) != (body > 0):
        raise TransferError(f"a corrupt transfer header (kind {kind} with a description of {body} bytes)")
    if h.inline and len(data) != HEADER_SIZE + nbytes + body:
        raise TransferError(f"a transfer header announces {nbytes + body} inline bytes but its message holds "
                            f"{len(data) - HEADER_SIZE}")
    if not h.inline and len(data) != HEADER_SIZE:
        raise TransferError(f"a transfer header of {len(data)} bytes (expected {HEADER_SIZE})")
    return h


def mismatch(h: Header, serial: int, gen: int, buffer: np.ndarray, order: str) -> str | None:
    """Why header ``h`` does not fit the var the receiver expects, or None when it does."""
    if h.serial != serial or h.gen != gen:
        return f"it carries var #{h.serial} v{h.gen} where var #{serial} v{gen} was expected"
    if h.body > MAX_BODY:
        return f"its failure description of {h.body} bytes is too large (at most {MAX_BODY})"
    if h.dtype != buffer.dtype or h.shape != buffer.shape or h.nbytes != buffer.nbytes or (
            h.order != order and buffer.ndim > 1):
        return (f"it holds {h.dtype} {h.shape} order {h.order} [{h.nbytes} bytes] but the buffer here is "
                f"{buffer.dtype} {buffer.shape} order {order} [{buffer.nbytes} bytes]")
    return None


# ------------------------------------------------------------------ failures
def _plain(value) -> bool:
    return value is None or value.__class__ in (bool, int, float, str)


def failure_body(exc: BaseException, rank: int, op_name: str) -> bytes:
    """A failure as JSON: plain data only."""
    cause = exc.__cause__
    if isinstance(cause, RemoteTraceback):  # a failure that came from another rank: forward its origin
        text, origin, origin_op = cause.text, cause.rank, cause.op
    else:
        text = "".join(traceback.format_exception(exc))
        origin, origin_op = rank, op_name
    if len(text) > _MAX_TEXT:
        half = _MAX_TEXT // 2
        text = f"{text[:half]}\n... ({len(text) - _MAX_TEXT} characters left out) ...\n{text[-half:]}"
    cls = type(exc)
    if isinstance(exc, RemoteError):
        type_module, type_name = exc.type_module, exc.type_name
    else:
        type_module, type_name = cls.__module__, cls.__qualname__
    args = list(exc.args) if all(_plain(a) for a in exc.args) else None
    message = str(exc) if not isinstance(exc, RemoteError) else exc.message
    body = {"module": type_module, "type": type_name, "args": args, "message": message[:8192],
            "traceback": text, "rank": origin, "op": origin_op}
    return json.dumps(body).encode("utf-8")


def failure_from_body(body: bytes, src: int, dst: int, var_name: str) -> BaseException:
    """Rebuild a failure sent by rank ``src``; never runs code from the message."""
    try:
        d = json.loads(body.decode("utf-8"))
        module, name, message, text = d["module"], d["type"], d["message"], d["traceback"]
        origin, op_name, args = d["rank"], d["op"], d["args"]
        if not all(isinstance(x, str) for x in (module, name, message, text, op_name)) or \
                origin.__class__ is not int or not (args is None or isinstance(args, list)):
            raise TypeError("fields of the wrong type")
        if args is not None and not all(_plain(a) for a in args):
            raise TypeError("arguments that are not plain values")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        return TransferError(f"var {var_name!r}: rank {src} sent a failure that rank {dst} cannot read ({e})")
    exc = _rebuild(module, name, args, message)
    if exc is None:
        exc = RemoteError(module, name, message)
    exc.__cause__ = RemoteTraceback(text, origin, op_name)
    exc.add_note(f"depengine: raised on rank {origin} by op {op_name!r}; var {var_name!r} reached rank {dst} "
                 f"from rank {src} failed")
    return exc


def _lookup(module: str, qualname: str):
    """The exception class ``module.qualname`` if that module is already imported (never imports)."""
    obj = sys.modules.get(module)
    for part in qualname.split("."):
        if obj is None or part.startswith("<"):
            return None
        obj = getattr(obj, "__dict__", {}).get(part)  # plain lookups: no __getattr__ hooks run
    return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None


def _rebuild(module: str, name: str, args, message: str) -> BaseException | None:
    cls = _lookup(module, name)
    if cls is None:
        return None
    try:
        exc = cls(*args) if args is not None else cls(message)
        if str(exc) == message:
            return exc
    except Exception:  # a constructor that wants other arguments
        pass
    try:  # the arguments without the constructor: many exceptions print from args alone
        exc = cls.__new__(cls)
        exc.args = tuple(args) if args is not None else (message,)
        if str(exc) == message:
            return exc
    except Exception:
        pass
    return None
