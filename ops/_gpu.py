"""The GPU backend: CUDA C kernels compiled once per device with NVRTC (numba twins for the
simulator), and the scratch memory an op uses on its stream.

Every kernel works on contiguous operands (``Scratch`` gathers strided or
broadcast operands into contiguous scratch first) with one thread per output
element, except ``matmul`` (16x16 shared-memory tiles).  Dtypes: float32 and
float64 (``f32``/``f64``); comparisons write ``bool`` as one byte, which
casts back to floats (``cast_b8_*``).
"""

from __future__ import annotations

import threading

import numba
import numpy as np

from scheduler.runtime import KernelSource

from . import _cpu
from ._core import runtime
from .array import NDArray

__all__ = ["ALL_KERNELS", "BLOCK", "CAST_TAGS", "GPU_DTYPES", "Scratch", "gpu_op", "kernel", "launch_1d",
           "offsets"]

GPU_DTYPES = {np.dtype(np.float32): ("f32", "float"), np.dtype(np.float64): ("f64", "double")}
CAST_TAGS = {np.dtype(np.bool_): "b8", **{dt: tag for dt, (tag, _) in GPU_DTYPES.items()}}  # cast_<from>_<to>
BLOCK = 256

_BINARY_EXPR = {"add": "a[i] + b[i]", "subtract": "a[i] - b[i]", "multiply": "a[i] * b[i]",
                "divide": "a[i] / b[i]", "power": "pow(a[i], b[i])", "maximum": "fmax(a[i], b[i])",
                "minimum": "fmin(a[i], b[i])"}
_COMPARE_EXPR = {"equal": "==", "not_equal": "!=", "less": "<", "less_equal": "<=", "greater": ">",
                 "greater_equal": ">="}
_UNARY_EXPR = {"exp": "exp(a[i])", "log": "log(a[i])", "sqrt": "sqrt(a[i])", "tanh": "tanh(a[i])",
               "abs": "fabs(a[i])", "negative": "-a[i]", "sin": "sin(a[i])", "cos": "cos(a[i])",
               "square": "a[i] * a[i]", "sign": "(a[i] > 0) - (a[i] < 0)", "copy": "a[i]"}
_IDX = "long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return;"


def _src(name: str, params: str, body: str) -> str:
    return f'extern "C" __global__ void {name}({params}) {{\n  {body}\n}}\n'


@numba.njit(nogil=True, cache=True)
def _sim_gather(out, src, idx, n):
    for i in range(n):
        out[i] = src[idx[i]]


@numba.njit(nogil=True, cache=True)
def _sim_scatter(out, src, idx, n):
    for i in range(n):
        out[idx[i]] = src[i]


@numba.njit(nogil=True, cache=True)
def _sim_matmul(c, a, b, m, n, k):
    for i in range(m):
        for j in range(n):
            acc = c[0] - c[0]
            for p in range(k):
                acc += a[i * k + p] * b[p * n + j]
            c[i * n + j] = acc


@numba.njit(nogil=True, cache=True)
def _sim_fill(out, value, n):
    for i in range(n):
        out[i] = value


@numba.njit(nogil=True, cache=True)
def _sim_arange(out, start, step, n):
    for i in range(n):
        out[i] = start + i * step


def _sim_binary(op):
    return lambda out, a, b, n: _cpu.flat(op, out, a, b)


def _sim_compare(op):
    return lambda out, a, b, n: _cpu.flat(op, out.view(np.bool_), a, b)


def _sim_unary(op):
    return lambda out, a, n: _cpu.flat(op, out, a)


def _sim_reduce(code):
    def run(out, x, outer, n, inner):
        _cpu.reduce_axis(code, x.reshape(outer, n, inner), out.reshape(outer, inner))
    return run


def _sim_random(out, seed, counter, normal, a, b, n):
    _cpu.fill_random(out, np.uint64(seed), np.uint64(counter), bool(normal), float(a), float(b))


def _sim_softmax_ce(out, x, labels, n, c):
    _cpu.softmax_ce(x.reshape(n, c), labels, out, False)


def _sim_softmax_ce_grad(out, x, labels, g, n, c):
    _cpu.softmax_ce_grad(x.reshape(n, c), labels, g, out.reshape(n, c), False)


_SOFTMAX_ROW = ("long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return;\n"
                "  const {t}* row = x + i * c; double lab = labels[i]; long long k = (long long)lab;\n"
                "  bool bad = lab != (double)k || k < 0 || k >= c;\n"
                "  double top = row[0]; for (long long j = 1; j < c; ++j) top = fmax(top, (double)row[j]);\n"
                "  double total = 0; for (long long j = 0; j < c; ++j) total += exp((double)row[j] - top);\n")


def _build() -> dict[str, KernelSource]:
    ks: dict[str, KernelSource] = {}

    def add(name, params, body, sim, access):
        ks[name] = KernelSource(name, _src(name, params, body), sim, access)

    for tag, ctype in GPU_DTYPES.values():
        for op in _cpu.BINARY:
            add(f"{op}_{tag}", f"{ctype}* out, const {ctype}* a, const {ctype}* b, long long n",
                f"{_IDX} out[i] = {_BINARY_EXPR[op]};", _sim_binary(op), ("w", "r", "r", ""))
        for op in _cpu.COMPARE:
            add(f"{op}_{tag}", f"unsigned char* out, const {ctype}* a, const {ctype}* b, long long n",
                f"{_IDX} out[i] = a[i] {_COMPARE_EXPR[op]} b[i];", _sim_compare(op), ("w", "r", "r", ""))
        for op in _cpu.UNARY:
            add(f"{op}_{tag}", f"{ctype}* out, const {ctype}* a, long long n",
                f"{_IDX} out[i] = {_UNARY_EXPR[op]};", _sim_unary(op), ("w", "r", ""))
        for code, op in enumerate(_cpu.REDUCE):
            out_t = "long long" if op == "argmax" else ctype
            if op in ("sum", "mean"):
                loop = (f"{ctype} acc = 0; for (long long k = 0; k < n; ++k) acc += x[base + k * inner]; "
                        f"out[t] = {'acc / n' if op == 'mean' else 'acc'};")
            elif op == "argmax":
                loop = ("long long best = 0; for (long long k = 1; k < n; ++k) "
                        "if (x[base + k * inner] > x[base + best * inner]) best = k; out[t] = best;")
            else:
                cmp = ">" if op == "max" else "<"
                loop = (f"{ctype} acc = x[base]; for (long long k = 1; k < n; ++k) "
                        f"{{ {ctype} v = x[base + k * inner]; if (v {cmp} acc) acc = v; }} out[t] = acc;")
            add(f"reduce_{op}_{tag}", f"{out_t}* out, const {ctype}* x, long long outer, long long n, "
                f"long long inner",
                "long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; "
                "if (t >= outer * inner) return; long long o = t / inner, i = t % inner; "
                "long long base = o * n * inner + i; " + loop,
                _sim_reduce(code), ("w", "r", "", "", ""))

        row = _SOFTMAX_ROW.format(t=ctype)
        args = f"{ctype}* out, const {ctype}* x, const {ctype}* labels"
        add(f"softmax_ce_{tag}", f"{args}, long long n, long long c",
            row + f"  out[i] = bad ? ({ctype})nan(\"\") : ({ctype})(top + log(total) - row[k]);",
            _sim_softmax_ce, ("w", "r", "r", "", ""))
        add(f"softmax_ce_grad_{tag}", f"{args}, const {ctype}* g, long long n, long long c",
            row + "  for (long long j = 0; j < c; ++j) out[i * c + j] = bad ? "
            f"({ctype})nan(\"\") : ({ctype})((double)g[i] * (exp((double)row[j] - top) / total - (j == k)));",
            _sim_softmax_ce_grad, ("w", "r", "r", "r", "", ""))
        add(f"fill_{tag}", f"{ctype}* out, {ctype} value, long long n", f"{_IDX} out[i] = value;",
            _sim_fill, ("w", "", ""))
        add(f"arange_{tag}", f"{ctype}* out, {ctype} start, {ctype} step, long long n",
            f"{_IDX} out[i] = start + i * step;", _sim_arange, ("w", "", "", ""))
        add(f"matmul_{tag}",
            f"{ctype}* c, const {ctype}* a, const {ctype}* b, long long m, long long n, long long k",
            f"__shared__ {ctype} ta[16][16]; __shared__ {ctype} tb[16][16];\n"
            "  long long row = (long long)blockIdx.y * 16 + threadIdx.y;\n"
            "  long long col = (long long)blockIdx.x * 16 + threadIdx.x;\n"
            f"  {ctype} acc = 0;\n"
            "  for (long long p0 = 0; p0 < k; p0 += 16) {\n"
            "    long long pa = p0 + threadIdx.x, pb = p0 + threadIdx.y;\n"
            "    ta[threadIdx.y][threadIdx.x] = (row < m && pa < k) ? a[row * k + pa] : 0;\n"
            "    tb[threadIdx.y][threadIdx.x] = (pb < k && col < n) ? b[pb * n + col] : 0;\n"
            "    __syncthreads();\n"
            "    for (int q = 0; q < 16; ++q) acc += ta[threadIdx.y][q] * tb[q][threadIdx.x];\n"
            "    __syncthreads();\n"
            "  }\n"
            "  if (row < m && col < n) c[row * n + col] = acc;",
            _sim_matmul, ("w", "r", "r", "", "", ""))
        add(f"random_{tag}", f"{ctype}* out, unsigned long long seed, unsigned long long counter, "
            "int normal, double a, double b, long long n",
            f"{_IDX}\n"
            "  unsigned long long s = mix64(seed);\n"
            "  const double scale = 1.0 / 9007199254740992.0;\n"
            "  double u1 = (double)(mix64(s ^ (counter + 2ull * i)) >> 11) * scale;\n"
            "  if (normal) {\n"
            "    double u2 = (double)(mix64(s ^ (counter + 2ull * i + 1ull)) >> 11) * scale;\n"
            f"    out[i] = ({ctype})(a + b * sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2));\n"
            "  } else {\n"
            f"    out[i] = ({ctype})(a + (b - a) * u1);\n"
            "  }",
            _sim_random, ("w", "", "", "", "", "", ""))
        ks[f"random_{tag}"] = KernelSource(f"random_{tag}", _MIX64 + ks[f"random_{tag}"].source,
                                           _sim_random, ks[f"random_{tag}"].access)
    for size, ctype in ((1, "unsigned char"), (4, "unsigned int"), (8, "unsigned long long")):
        # by element size, whatever the dtype: bool, float32, float64
        add(f"gather_{size}", f"{ctype}* out, const {ctype}* src, const long long* idx, long long n",
            f"{_IDX} out[i] = src[idx[i]];", _sim_gather, ("w", "r", "r", ""))
        add(f"scatter_{size}", f"{ctype}* out, const {ctype}* src, const long long* idx, long long n",
            f"{_IDX} out[idx[i]] = src[i];", _sim_scatter, ("rw", "r", "r", ""))
    for src_tag, src_t in (("b8", "unsigned char"), *GPU_DTYPES.values()):  # bool: comparison results
        for dst_tag, dst_t in GPU_DTYPES.values():
            if src_tag != dst_tag:
                add(f"cast_{src_tag}_{dst_tag}", f"{dst_t}* out, const {src_t}* a, long long n",
                    f"{_IDX} out[i] = ({dst_t})a[i];", lambda out, a, n: out.__setitem__(slice(None), a),
                    ("w", "r", ""))
    return ks


_MIX64 = """__device__ unsigned long long mix64(unsigned long long x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
"""

ALL_KERNELS: dict[str, KernelSource] = _build()

_modules: dict[tuple[int, int], dict] = {}  # (id(runtime), device) -> compiled kernels
_compile_lock = threading.Lock()


def kernel(rt, device: int, name: str):
    """Kernel ``name`` compiled for ``device`` (compiled on first use, then cached)."""
    key = (id(rt), device)
    module = _modules.get(key)
    if module is None or name not in module:
        with _compile_lock:
            module = _modules.setdefault(key, {})
            if name not in module:
                rt.bind_thread(device)
                module.update(rt.compile([ALL_KERNELS[name]]))
    return module[name]


def launch_1d(rt, device: int, name: str, n: int, args, stream) -> None:
    """Launch ``name`` with one thread per element of an ``n``-element output."""
    grid = (max(1, (n + BLOCK - 1) // BLOCK),)
    rt.launch(kernel(rt, device, name), grid, (BLOCK,), args, stream)


# ------------------------------------------------- scratch memory of an op
def offsets(x: NDArray) -> np.ndarray:
    """Element offsets of every element of ``x`` in its device buffer, in C order."""
    idx = np.full(x.shape, x._offset, dtype=np.int64)
    for axis, (n, st) in enumerate(zip(x.shape, x._strides, strict=True)):
        shape = [1] * x.ndim
        shape[axis] = n
        idx += (np.arange(n, dtype=np.int64) * st).reshape(shape)
    return idx


class Scratch:
    """Device buffers used by one op on one stream, freed in stream order after it."""

    def __init__(self, rt, device: int, stream) -> None:
        self.rt, self.device, self.stream = rt, device, stream
        self.bufs = []

    def alloc(self, nbytes: int):
        buf = self.rt.alloc(self.device, max(nbytes, 1), self.stream)
        self.bufs.append(buf)
        return buf

    def free(self) -> None:
        for buf in self.bufs:
            self.rt.free(buf, self.stream)

    def contiguous(self, x, shape, dtype):
        """A kernel argument holding ``x`` broadcast to ``shape`` as a contiguous ``dtype`` array."""
        buf, offset = self.contiguous_buffer(x, shape, dtype)
        return self.rt.kernel_arg(buf, dtype, (int(np.prod(shape, dtype=np.int64)),), offset)

    def contiguous_buffer(self, x, shape, dtype):
        """(buffer, element offset) of ``x`` broadcast to ``shape``, contiguous, as ``dtype``."""
        rt, dev, s = self.rt, self.device, self.stream
        n = int(np.prod(shape, dtype=np.int64))
        dtype = np.dtype(dtype)
        if not isinstance(x, NDArray):
            buf = self.alloc(n * dtype.itemsize)
            launch_1d(rt, dev, f"fill_{GPU_DTYPES[dtype][0]}", n,
                           [rt.kernel_arg(buf, dtype, (n,)), dtype.type(x), np.int64(n)], s)
            return buf, 0
        src = x._store.ensure(rt, s)
        if x.shape == tuple(shape) and x._contiguous:
            buf, offset = src, x._offset
        else:
            idx = np.ascontiguousarray(np.broadcast_to(offsets(x), shape)).reshape(-1)
            ibuf = self.alloc(idx.nbytes)
            rt.copy_htod(ibuf, idx, s)
            buf, offset = self.alloc(n * x.dtype.itemsize), 0
            total = x._store.nbytes // x.dtype.itemsize
            launch_1d(rt, dev, f"gather_{x.dtype.itemsize}", n,
                           [rt.kernel_arg(buf, x.dtype, (n,)), rt.kernel_arg(src, x.dtype, (total,)),
                            rt.kernel_arg(ibuf, np.int64, (n,)), np.int64(n)], s)
        if x.dtype == dtype:
            return buf, offset
        cast = self.alloc(n * dtype.itemsize)
        launch_1d(rt, dev, f"cast_{CAST_TAGS[x.dtype]}_{GPU_DTYPES[dtype][0]}", n,
                       [rt.kernel_arg(cast, dtype, (n,)), rt.kernel_arg(buf, x.dtype, (n,), offset),
                        np.int64(n)], s)
        return cast, 0

    def output(self, out: NDArray, shape, dtype):
        """(kernel argument, finish) for writing a contiguous ``dtype`` result into ``out``."""
        rt, dev, s = self.rt, self.device, self.stream
        n = int(np.prod(shape, dtype=np.int64))
        dst = out._store.ensure(rt, s)
        if out.shape == tuple(shape) and out._contiguous and out.dtype == dtype:
            return rt.kernel_arg(dst, dtype, (n,), out._offset), lambda: None
        tmp = self.alloc(n * np.dtype(dtype).itemsize)
        tmp_arg = rt.kernel_arg(tmp, dtype, (n,))

        def finish():
            # cast to out's dtype, then scatter into its (possibly strided) elements
            src = tmp_arg
            if np.dtype(dtype) != out.dtype:
                cast = self.alloc(n * out.dtype.itemsize)
                launch_1d(rt, dev, f"cast_{GPU_DTYPES[np.dtype(dtype)][0]}_"
                               f"{GPU_DTYPES[out.dtype][0]}", n,
                               [rt.kernel_arg(cast, out.dtype, (n,)), tmp_arg, np.int64(n)], s)
                src = rt.kernel_arg(cast, out.dtype, (n,))
            idx = np.ascontiguousarray(offsets(out)).reshape(-1)
            ibuf = self.alloc(idx.nbytes)
            rt.copy_htod(ibuf, idx, s)
            total = out._store.nbytes // out.dtype.itemsize
            launch_1d(rt, dev, f"scatter_{out.dtype.itemsize}", n,
                           [rt.kernel_arg(dst, out.dtype, (total,)), src, rt.kernel_arg(ibuf, np.int64, (n,)),
                            np.int64(n)], s)
        return tmp_arg, finish


def gpu_op(out: NDArray, body):
    """An op body running ``body(scratch)`` on the op's stream, then freeing scratch."""
    eng = out._engine

    def fn(ctx):
        scratch = Scratch(runtime(eng, out.device), out.device.index, ctx.stream)
        try:
            body(scratch)
        finally:
            scratch.free()
    return fn


# ------------------------------------------------------- Cholesky tile kernels
def _sim_potrf(a, n, lda):
    from ._blas import potrf_lower

    info = potrf_lower(a.reshape(n, lda))
    if info:
        raise np.linalg.LinAlgError(f"tile is not positive definite (leading minor of order {info})")


def _sim_trsm(lkk, b, m, n):
    from ._blas import trsm_right_lower_t

    trsm_right_lower_t(lkk.reshape(n, n), b.reshape(m, n))


def _sim_syrk(c, a, n, k):
    from ._blas import syrk_lower_sub

    syrk_lower_sub(c.reshape(n, n), a.reshape(n, k))


def _sim_gemm(c, a, b, m, n, k):
    from ._blas import gemm_nt_sub

    gemm_nt_sub(c.reshape(m, n), a.reshape(m, k), b.reshape(n, k))


CHOLESKY_KERNELS = {k.name: k for k in (
    KernelSource("chol_potrf_f64", _src(
        "chol_potrf_f64", "double* a, long long n, long long lda",
        "__shared__ int failed; if (threadIdx.x == 0) failed = 0; __syncthreads();\n"
        "  for (long long k = 0; k < n; ++k) {\n"
        "    if (threadIdx.x == 0) { double d = a[k * lda + k]; if (!(d > 0)) failed = 1; "
        "a[k * lda + k] = sqrt(d); }\n"
        "    __syncthreads();\n"
        "    if (failed) { for (long long t = threadIdx.x; t < n * n; t += blockDim.x)\n"
        "      a[(t / n) * lda + t % n] = nan(\"\"); return; }\n"
        "    double d = a[k * lda + k];\n"
        "    for (long long i = k + 1 + threadIdx.x; i < n; i += blockDim.x) a[i * lda + k] /= d;\n"
        "    __syncthreads();\n"
        "    long long r = n - k - 1;\n"
        "    for (long long t = threadIdx.x; t < r * r; t += blockDim.x) {\n"
        "      long long i = k + 1 + t / r, j = k + 1 + t % r;\n"
        "      if (j <= i) a[i * lda + j] -= a[i * lda + k] * a[j * lda + k];\n"
        "    }\n"
        "    __syncthreads();\n"
        "  }\n"
        "  for (long long t = threadIdx.x; t < n * n; t += blockDim.x) "
        "if (t % n > t / n) a[(t / n) * lda + t % n] = 0;"),
        _sim_potrf, ("rw", "", "")),
    KernelSource("chol_trsm_f64", _src(
        "chol_trsm_f64", "const double* l, double* b, long long m, long long n",
        "long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; if (r >= m) return;\n"
        "  for (long long j = 0; j < n; ++j) {\n"
        "    double x = b[r * n + j];\n"
        "    for (long long p = 0; p < j; ++p) x -= b[r * n + p] * l[j * n + p];\n"
        "    b[r * n + j] = x / l[j * n + j];\n"
        "  }"),
        _sim_trsm, ("r", "rw", "", "")),
    KernelSource("chol_syrk_f64", _src(
        "chol_syrk_f64", "double* c, const double* a, long long n, long long k",
        "long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; if (t >= n * n) return;\n"
        "  long long i = t / n, j = t % n; if (j > i) return;\n"
        "  double acc = 0; for (long long p = 0; p < k; ++p) acc += a[i * k + p] * a[j * k + p];\n"
        "  c[i * n + j] -= acc;"),
        _sim_syrk, ("rw", "r", "", "")),
    KernelSource("chol_gemm_f64", _src(
        "chol_gemm_f64", "double* c, const double* a, const double* b, long long m, long long n, long long k",
        "long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; if (t >= m * n) return;\n"
        "  long long i = t / n, j = t % n;\n"
        "  double acc = 0; for (long long p = 0; p < k; ++p) acc += a[i * k + p] * b[j * k + p];\n"
        "  c[i * n + j] -= acc;"),
        _sim_gemm, ("rw", "r", "r", "", "", "")),
)}
ALL_KERNELS.update(CHOLESKY_KERNELS)
