"""What travels between ranks, and how a received message is checked before it is used.

A transfer of one var version is a header message, optionally followed by a
payload message on the same tag (MPI keeps the two in order).  The header is
a fixed little-endian struct: magic, kind (data or failure), the var's serial
and version, dtype, order, shape and the payload size, and whether the
payload travels inline (small transfers: one message).  A failure's payload is
JSON: the exception's type, arguments, message, remote traceback text, and
the rank and op that raised it.

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

__all__ = ["HEADER_SIZE", "INLINE_MAX", "MAX_BODY", "Header", "decode_header", "encode_data",
           "encode_failure", "failure_from_body", "mismatch"]

MAGIC = b"DEP1"
DATA, FAILURE = 1, 2
FLAG_INLINE = 1
MAX_DIMS = 16
_STRUCT = struct.Struct("<4sBBBB8sQQQ" + "Q" * MAX_DIMS)
HEADER_SIZE = _STRUCT.size
INLINE_MAX = 4096          # payloads up to this size travel in the header's message
MAX_BODY = 1 << 20         # the largest failure description a receiver accepts
_MAX_TEXT = 64 * 1024      # traceback text kept per failure (its head and tail)


class Header:
    """A decoded transfer header."""

    __slots__ = ("dtype", "gen", "inline", "kind", "nbytes", "order", "serial", "shape")

    def describe(self) -> str:
        if self.kind == FAILURE:
            return f"a failure of var #{self.serial} v{self.gen}"
        return (f"var #{self.serial} v{self.gen} as {self.dtype} {self.shape} order {self.order} "
                f"[{self.nbytes} bytes]")


def dtype_code(dtype: np.dtype) -> bytes:
    """The dtype's code in a header; raises ValueError for one that cannot travel."""
    if dtype.hasobject:
        raise ValueError(f"dtype {dtype} holds Python objects: its bytes cannot be sent to another rank")
    code = dtype.str.encode("ascii")
    if len(code) > 8:
        raise ValueError(f"dtype {dtype} (code {dtype.str!r}) is not supported by the mpi engine")
    return code


def _pack(kind: int, serial: int, gen: int, dtype: bytes, order: str, shape: tuple, nbytes: int,
          inline: bool) -> bytes:
    dims = list(shape) + [0] * (MAX_DIMS - len(shape))
    return _STRUCT.pack(MAGIC, kind, len(shape), 0 if order == "C" else 1, FLAG_INLINE if inline else 0,
                        dtype, serial, gen, nbytes, *dims)


def encode_data(serial: int, gen: int, buffer: np.ndarray, order: str, flat: np.ndarray) -> bytes:
    """The header message of a data transfer: with the payload appended when it is at most
    ``INLINE_MAX`` bytes; otherwise the caller sends ``flat`` as a second message."""
    inline = flat.nbytes <= INLINE_MAX
    head = _pack(DATA, serial, gen, dtype_code(buffer.dtype), order, buffer.shape, flat.nbytes, inline)
    return head + flat.tobytes() if inline else head


def encode_failure(serial: int, gen: int, exc: BaseException, rank: int, op_name: str) -> tuple[bytes, bytes]:
    """``(header, body)`` of a failure transfer; the body is inline in the header message when
    small (then the second element is empty)."""
    body = failure_body(exc, rank, op_name)
    inline = len(body) <= INLINE_MAX
    head = _pack(FAILURE, serial, gen, b"", "C", (), len(body), inline)
    return (head + body, b"") if inline else (head, body)


def decode_header(data: bytes | bytearray) -> Header:
    """The header at the start of ``data``; raises TransferError when it is not one."""
    if len(data) < HEADER_SIZE:
        raise TransferError(f"a message of {len(data)} bytes is too short for a transfer header "
                            f"({HEADER_SIZE} bytes)")
    magic, kind, ndim, order, flags, dtype, serial, gen, nbytes, *dims = _STRUCT.unpack_from(data)
    if magic != MAGIC:
        raise TransferError(f"a message that is not a depengine transfer (magic {magic!r})")
    if kind not in (DATA, FAILURE) or ndim > MAX_DIMS or order > 1:
        raise TransferError(f"a corrupt transfer header (kind {kind}, ndim {ndim}, order {order})")
    h = Header()
    h.kind = kind
    h.serial = serial
    h.gen = gen
    h.nbytes = nbytes
    h.inline = bool(flags & FLAG_INLINE)
    h.order = "CF"[order]
    h.shape = tuple(dims[:ndim])
    try:
        h.dtype = np.dtype(dtype.rstrip(b"\0").decode("ascii")) if kind == DATA else None
    except (UnicodeDecodeError, TypeError, ValueError):
        raise TransferError(f"a transfer header with an unknown dtype code {dtype!r}") from None
    if h.inline and len(data) != HEADER_SIZE + nbytes:
        raise TransferError(f"a transfer header announces {nbytes} inline bytes but its message holds "
                            f"{len(data) - HEADER_SIZE}")
    if not h.inline and len(data) != HEADER_SIZE:
        raise TransferError(f"a transfer header of {len(data)} bytes (expected {HEADER_SIZE})")
    return h


def mismatch(h: Header, serial: int, gen: int, buffer: np.ndarray, order: str) -> str | None:
    """Why header ``h`` does not fit the var the receiver expects, or None when it does."""
    if h.serial != serial or h.gen != gen:
        return f"it carries var #{h.serial} v{h.gen} where var #{serial} v{gen} was expected"
    if h.kind == FAILURE:
        return None if h.nbytes <= MAX_BODY else f"its failure description of {h.nbytes} bytes is too large"
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
