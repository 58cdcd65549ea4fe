"""Zero-copy exchange with NumPy, CuPy and PyTorch: DLPack and ``__cuda_array_interface__``.

On the CPU, NumPy already speaks DLPack; ops/ hands out (and takes in) NumPy
views after waiting for pending writes.  On a real GPU, ops/ builds and reads
DLPack's C structures itself with ctypes.  Simulated GPU memory has no device
address, so it cannot be exported (a clear ``BufferError`` says so).
"""

from __future__ import annotations

import ctypes

import numpy as np

import depengine as de

from ._core import DeviceStore, engine, runtime
from .array import NDArray

__all__ = ["cuda_array_interface", "from_dlpack", "to_dlpack"]

KDL_CPU, KDL_CUDA = 1, 2
_DL_CODES = {"i": 0, "u": 1, "f": 2, "b": 6}


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _Deleter)]


_api = ctypes.pythonapi
_api.PyCapsule_New.restype = ctypes.py_object
_api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]

_alive: dict[int, tuple] = {}  # managed tensor address -> what must live as long as it


@_Deleter
def _delete_managed(address):
    _alive.pop(address, None)


_CapsuleDestructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@_CapsuleDestructor
def _capsule_destructor(capsule_ptr):
    capsule = ctypes.cast(capsule_ptr, ctypes.py_object)
    if _api.PyCapsule_IsValid(capsule, b"dltensor"):  # never consumed: release it ourselves
        _alive.pop(_api.PyCapsule_GetPointer(capsule, b"dltensor"), None)


def export_capsule(address: int, shape, strides_elems, dtype, device: tuple[int, int], owner) -> object:
    """A ``dltensor`` capsule describing memory at ``address``; ``owner`` lives until the consumer is done."""
    dtype = np.dtype(dtype)
    managed = _DLManagedTensor()
    nd = len(shape)
    shape_arr = (ctypes.c_int64 * max(nd, 1))(*shape)
    strides_arr = (ctypes.c_int64 * max(nd, 1))(*strides_elems)
    t = managed.dl_tensor
    t.data = address
    t.device = _DLDevice(*device)
    t.ndim = nd
    t.dtype = _DLDataType(_DL_CODES[dtype.kind], dtype.itemsize * 8, 1)
    t.shape = ctypes.cast(shape_arr, ctypes.POINTER(ctypes.c_int64))
    t.strides = ctypes.cast(strides_arr, ctypes.POINTER(ctypes.c_int64))
    t.byte_offset = 0
    managed.deleter = _delete_managed
    addr = ctypes.addressof(managed)
    _alive[addr] = (managed, shape_arr, strides_arr, owner)
    return _api.PyCapsule_New(addr, b"dltensor", ctypes.cast(_capsule_destructor, ctypes.c_void_p))


def to_dlpack(x: NDArray, stream=None, max_version=None):
    """``x.__dlpack__()``: wait for pending writes, then share the memory."""
    x.wait_to_read()
    if x.device.type == "cpu":
        return x._data.__dlpack__(stream=stream)
    rt = runtime(x._engine, x.device)
    if rt.name != "cuda":
        raise BufferError("simulated GPU memory has no device address: DLPack export needs a real GPU")
    base = int(x._store.buf.handle) + x._offset * x.dtype.itemsize
    return export_capsule(base, x.shape, x._strides, x.dtype, (KDL_CUDA, x.device.index), x)


def cuda_array_interface(x: NDArray) -> dict:
    """``__cuda_array_interface__`` (version 3) of a GPU array on a real GPU."""
    if x.device.type != "gpu":
        raise AttributeError("a CPU array has no __cuda_array_interface__ (use __array__ or DLPack)")
    rt = runtime(x._engine, x.device)
    if rt.name != "cuda":
        raise AttributeError("simulated GPU memory has no __cuda_array_interface__")
    x.wait_to_read()
    item = x.dtype.itemsize
    return {
        "shape": x.shape,
        "typestr": x.dtype.str,
        "data": (int(x._store.buf.handle) + x._offset * item, False),
        "strides": None if x._contiguous else tuple(s * item for s in x._strides),
        "version": 3,
        "stream": None,  # the data is ready: wait_to_read synchronised it
    }


def _read_capsule(capsule):
    ptr = _api.PyCapsule_GetPointer(capsule, b"dltensor")
    managed = _DLManagedTensor.from_address(ptr)
    t = managed.dl_tensor
    shape = tuple(t.shape[i] for i in range(t.ndim))
    kinds = {v: k for k, v in _DL_CODES.items()}
    if t.dtype.lanes != 1 or t.dtype.code not in kinds:
        raise TypeError(f"from_dlpack: unsupported DLPack dtype code={t.dtype.code} lanes={t.dtype.lanes}")
    dtype = np.dtype(f"{'?' if kinds[t.dtype.code] == 'b' else kinds[t.dtype.code]}{t.dtype.bits // 8}")
    strides = (tuple(t.strides[i] for i in range(t.ndim)) if t.strides
               else tuple(int(s) for s in np.cumprod((1, *shape[::-1][:-1]))[::-1]) if shape else ())
    return ptr, managed, shape, strides, dtype, (t.device.device_type, t.device.device_id)


def from_dlpack(obj) -> NDArray:
    """An NDArray sharing ``obj``'s memory (CPU: any DLPack producer; GPU: a real GPU)."""
    if not hasattr(obj, "__dlpack_device__"):
        raise TypeError(f"from_dlpack: {type(obj).__name__} does not implement the DLPack protocol")
    dev_type, dev_id = obj.__dlpack_device__()
    eng = engine()
    if int(dev_type) == KDL_CPU:
        data = np.from_dlpack(obj)
        if data.dtype not in (np.bool_, np.int32, np.int64, np.float32, np.float64):
            raise TypeError(f"from_dlpack: dtype {data.dtype} is not supported on cpu(0)")
        return NDArray._wrap_host(eng, data, "from_dlpack", de.cpu())
    if int(dev_type) != KDL_CUDA:
        raise TypeError(f"from_dlpack: device type {dev_type} is neither CPU (1) nor CUDA (2)")
    device = de.gpu(int(dev_id))
    rt = runtime(eng, device)
    if rt.name != "cuda":
        raise BufferError("from_dlpack of CUDA memory needs a real GPU (this is the simulated runtime)")
    capsule = obj.__dlpack__(stream=None)
    _, managed, shape, strides, dtype, _ = _read_capsule(capsule)
    _api.PyCapsule_SetName(capsule, b"used_dltensor")
    from cuda.core import Buffer

    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    store = DeviceStore(device.index, max(size, 1), borrowed=True)
    store.buf = Buffer.from_handle(managed.dl_tensor.data + managed.dl_tensor.byte_offset, size,
                                   owner=_ConsumedTensor(managed))
    var = eng.new_var("from_dlpack")
    store.owner = (eng, var)
    return NDArray._new(eng, var, shape, dtype, device, store=store, strides=strides)


class _ConsumedTensor:
    """Calls the producer's deleter once our buffer no longer needs the memory."""

    def __init__(self, managed) -> None:
        self.managed = managed

    def __del__(self) -> None:
        if self.managed.deleter:
            self.managed.deleter(ctypes.addressof(self.managed))
