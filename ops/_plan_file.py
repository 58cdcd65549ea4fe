"""The plan file: a zip archive holding ``plan.json`` (the graph) and one ``.npy`` file per stored array.

Everything here treats the file as outside data.  The archive is read
member by member without ever extracting anything to disk; a member whose
name is not one the format has (``plan.json``, ``arrays/<n>.npy``), a name
that climbs out of the archive, or a name present twice is rejected.  The
JSON is decoded against a fixed schema (msgspec: unknown fields, wrong
types and nesting deeper than the schema fail at once) and never evaluated.
Arrays are ``.npy`` files read without pickle: their header (parsed by
NumPy's literal reader, bounded in size) must give the very dtype and shape
the JSON declares, and the member's size must be that header plus exactly
the bytes of that shape, so a small file cannot declare a huge array.
Every problem raises :class:`PlanError` naming the file and what is wrong.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from typing import Literal, NoReturn

import msgspec
import numpy as np

__all__ = ["DTYPES", "FORMAT", "VERSION", "ArraySpec", "BufferSpec", "OpSpec", "PlanError", "PlanFile",
           "Reader", "write_archive"]

FORMAT = "depengine-plan"
VERSION = 1
DTYPES = ("bool", "int32", "int64", "float32", "float64")
MAX_JSON = 64 * 2**20        # bytes of plan.json
MAX_MEMBERS = 100_000
MAX_NPY_HEADER = 10_000
GRAPH = "plan.json"
_MEMBER = re.compile(r"arrays/(0|[1-9][0-9]{0,8})\.npy\Z")


class PlanError(ValueError):
    """A plan file (or a plan to save) is not what the format allows; the message says what and where."""


Scalar = bool | int | float | str  # str: "nan", "inf" or "-inf" (JSON has no such numbers)


class _Head(msgspec.Struct):
    format: str
    version: int


class BufferSpec(msgspec.Struct, forbid_unknown_fields=True):
    """Memory of one array and its views: ``shape`` laid out in ``order`` ("C" or "F")."""

    id: int
    dtype: str
    shape: list[int]
    order: str = "C"
    data: str | None = None  # arrays/<id>.npy when its values are stored


class ArraySpec(msgspec.Struct, forbid_unknown_fields=True):
    """An array: a view of a buffer (strides and offset in elements of the buffer's memory)."""

    id: int
    buffer: int
    shape: list[int]
    strides: list[int]
    offset: int = 0


class Arg(msgspec.Struct, forbid_unknown_fields=True):
    array: int | None = None
    scalar: Scalar | None = None


class Attrs(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    work: str | None = None
    axis: int | None = None
    keepdims: bool = False
    value: Scalar | None = None
    start: Scalar | None = None
    step: Scalar | None = None


class OpSpec(msgspec.Struct, forbid_unknown_fields=True):
    op: str
    out: int
    args: list[Arg] = []
    attrs: Attrs = Attrs()


class Outputs(msgspec.Struct, forbid_unknown_fields=True):
    form: Literal["none", "single", "tuple", "list"]
    arrays: list[int] = []


class PlanFile(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    version: int
    name: str
    device: Literal["cpu", "gpu"]
    buffers: list[BufferSpec]
    arrays: list[ArraySpec]
    ops: list[OpSpec]
    inputs: list[int]
    outputs: Outputs
    state: list[int] = []


class Reader:
    """An open plan file: ``plan`` (the decoded graph) and ``check_npy``/``read_npy`` for its arrays."""

    def __init__(self, path) -> None:
        self.path = os.fspath(path)
        self.file = open(self.path, "rb")  # noqa: SIM115 (closed by close(); OSError: the file cannot be read)
        try:
            try:
                self.zip = zipfile.ZipFile(self.file)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError,
                    OSError) as exc:
                self.fail(f"not a plan file (not a zip archive: {exc})")
            self.members = self._members()
            self.plan = self._graph()
        except BaseException:
            self.close()
            raise

    def fail(self, why: str) -> NoReturn:
        raise PlanError(f"{self.path}: {why}")

    def close(self) -> None:
        if getattr(self, "zip", None) is not None:
            self.zip.close()
        self.file.close()

    def _members(self) -> dict[str, zipfile.ZipInfo]:
        infos = self.zip.infolist()
        if len(infos) > MAX_MEMBERS:
            self.fail(f"{len(infos)} members, more than a plan file has ({MAX_MEMBERS})")
        members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            if name.startswith(("/", "\\")) or "\\" in name or ".." in name.split("/") or ":" in name:
                self.fail(f"unsafe member name {name!r} (absolute, or climbing out of the archive)")
            if name in members:
                self.fail(f"member {name!r} is present twice")
            if name != GRAPH and not _MEMBER.match(name):
                self.fail(f"unexpected member {name!r} (a plan file holds {GRAPH} and arrays/<n>.npy)")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                self.fail(f"member {name!r} uses compression {info.compress_type} (stored or deflated only)")
            members[name] = info
        if GRAPH not in members:
            self.fail(f"no {GRAPH} in the archive: not a plan file")
        return members

    def _read(self, info: zipfile.ZipInfo, limit: int) -> bytes:
        if info.file_size > limit:
            self.fail(f"{info.filename} declares {info.file_size} bytes, more than {limit}")
        try:
            with self.zip.open(info) as f:
                data = f.read(limit + 1)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
            self.fail(f"{info.filename} cannot be read: {exc}")
        if len(data) != info.file_size:
            self.fail(f"{info.filename} holds {len(data)} bytes, its entry says {info.file_size}")
        return data

    def _graph(self) -> PlanFile:
        data = self._read(self.members[GRAPH], MAX_JSON)
        try:
            head = msgspec.json.decode(data, type=_Head)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            self.fail(f"{GRAPH} is not a plan graph: {exc}")
        if head.format != FORMAT:
            self.fail(f"{GRAPH} has format {head.format[:80]!r}, not {FORMAT!r}")
        if head.version != VERSION:
            self.fail(f"{GRAPH} is format version {head.version}; this depengine reads version {VERSION}")
        try:
            return msgspec.json.decode(data, type=PlanFile)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            self.fail(f"{GRAPH}: {exc}")

    def check_npy(self, name: str, dtype: np.dtype, shape: tuple, fortran: bool) -> None:
        """Check the header and size of member ``name`` (reading the header only)."""
        info = self.members.get(name)
        if info is None:
            self.fail(f"{GRAPH} names {name}, which the archive does not hold")
        with self._open(info, dtype, shape, fortran) as f:
            start = f.tell()
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if info.file_size != start + nbytes:
            self.fail(f"{name}: {info.file_size - start} bytes of data for {nbytes} bytes of {dtype.name} "
                      f"{tuple(shape)} (the sizes do not match)")

    def _open(self, info: zipfile.ZipInfo, want_dtype: np.dtype, want_shape: tuple, want_fortran: bool):
        """The member opened after its ``.npy`` header, which must say ``dtype``, ``shape``, ``fortran``."""
        name = info.filename
        want_shape = tuple(want_shape)
        try:
            f = self.zip.open(info)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
            self.fail(f"{name} cannot be read: {exc}")
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                got = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_NPY_HEADER)
            elif version == (2, 0):
                got = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_NPY_HEADER)
            else:
                raise ValueError(f".npy version {version} (1.0 and 2.0 are read)")
        except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError, OSError, EOFError,
                zipfile.BadZipFile) as exc:
            f.close()
            self.fail(f"{name} is not a plain .npy array: {exc}")
        shape, fortran, dtype = got
        if dtype != want_dtype or tuple(shape) != want_shape or (fortran and len(shape) > 1) != (
                want_fortran and len(want_shape) > 1):
            f.close()
            self.fail(f"{name} holds {dtype} {tuple(shape)}{' (Fortran order)' if fortran else ''}; "
                      f"{GRAPH} declares {want_dtype} {want_shape}")
        return f

    def read_npy(self, name: str, dtype: np.dtype, shape: tuple, fortran: bool, into: memoryview) -> None:
        """Read the data of ``name`` (checked by ``check_npy``) into the bytes ``into``."""
        with self._open(self.members[name], dtype, shape, fortran) as f:
            try:
                done = 0
                while done < len(into):
                    n = f.readinto(into[done:])
                    if not n:
                        self.fail(f"{name} is truncated ({done} of {len(into)} bytes)")
                    done += n
                if f.read(1):
                    self.fail(f"{name} holds more bytes than its shape")
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
                self.fail(f"{name} cannot be read: {exc}")


def write_archive(path, graph: bytes, arrays: dict[str, np.ndarray]) -> None:
    """Write the archive to a temporary file beside ``path``, then rename it (no half-written file)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".plan-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            zf.writestr(GRAPH, graph)
            for name, value in arrays.items():
                with zf.open(name, "w", force_zip64=value.nbytes > 2**30) as f:
                    np.lib.format.write_array(f, value, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
