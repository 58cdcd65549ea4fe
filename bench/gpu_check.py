"""The GPU check: the GPU path of depengine against a real GPU, in one command.

    make gpu-check            (or: PYTHONPATH=. python -m bench.gpu_check [--no-pytest])

Runs a fixed list of checks on ``de.gpu(0)`` through the real cuda-python
runtime (never the simulator), each reported PASS/FAIL with its time, then,
when pytest is importable, the GPU tests of the suite with
``DEPENGINE_TEST_GPU=real`` (``tests/test_ops.py``, the GPU plans of
``tests/test_record.py``, ``tests/test_nvrtc.py``).  Prints a summary and
exits 1 if anything failed, 2 if there is no usable GPU (with the reason).
Meant to finish well under 5 minutes on one H100.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback

import numpy as np

__all__ = ["main"]

_CHECKS = []


def check(fn):
    _CHECKS.append(fn)
    return fn


@check
def runtime_and_devices(de, nd, eng):
    from scheduler.runtime import get_runtime, runtime_kind

    rt = get_runtime(runtime_kind())
    names = [rt.device_name(i) for i in range(rt.device_count())]
    assert names, "no device"
    return f"{len(names)} device(s): {', '.join(names)}; de.devices() = {de.devices()}"


@check
def elementwise_reductions_matmul(de, nd, eng):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 200)), rng.standard_normal((200,))
    m = rng.standard_normal((200, 150))
    ga, gb, gm = (nd.array(x, device=de.gpu(0)) for x in (a, b, m))
    got = ((ga * 2.0 + gb).tanh() - 1.5).exp().asnumpy()
    np.testing.assert_allclose(got, np.exp(np.tanh(a * 2 + b) - 1.5), rtol=1e-12)
    np.testing.assert_allclose(ga.sum(axis=0).asnumpy(), a.sum(axis=0), rtol=1e-10)
    np.testing.assert_allclose(ga.max(axis=1).asnumpy(), a.max(axis=1))
    np.testing.assert_array_equal(ga.argmax(axis=1).asnumpy(), a.argmax(axis=1))
    np.testing.assert_allclose((ga @ gm).asnumpy(), a @ m, rtol=1e-10)
    np.testing.assert_allclose(ga.transpose().asnumpy(), a.T)
    np.testing.assert_array_equal((ga > gb).asnumpy(), a > b)
    return "float64 elementwise, broadcasting, reductions, argmax, matmul, views, comparisons"


@check
def copies_both_ways_and_in_place(de, nd, eng):
    x = np.arange(1_000_000, dtype=np.float32)
    g = nd.array(x).copyto(de.gpu(0))
    g += 1
    g *= 2
    back = g.copyto(de.cpu()).asnumpy()
    np.testing.assert_array_equal(back, (x + 1) * 2)
    return "h2d and d2h copy streams, in-place ops"


@check
def cross_stream_dependencies(de, nd, eng):
    """Many independent chains fan out over the compute streams, then meet."""
    parts = [nd.full((256, 256), float(k), device=de.gpu(0)) for k in range(8)]
    for _ in range(20):
        parts = [p * 1.0001 + 0.5 for p in parts]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    want = np.zeros((256, 256))
    for k in range(8):
        v = np.full((256, 256), float(k))
        for _ in range(20):
            v = v * 1.0001 + 0.5
        want += v
    np.testing.assert_allclose(total.asnumpy(), want, rtol=1e-12)
    lanes = {t.name.removeprefix("depengine-") for t in eng.threads() if t.name.startswith("depengine-gpu")}
    return f"8 chains x 20 ops joined; compute lanes {sorted(lanes)}"


@check
def stream_overlap_in_a_profile(de, nd, eng):
    n = 256 if _simulated(eng) else 2048
    a = nd.array(np.random.default_rng(1).standard_normal((n, n)), device=de.gpu(0))
    b = nd.array(np.random.default_rng(2).standard_normal((n, n)), device=de.gpu(0))
    a.wait_to_read(), b.wait_to_read()
    with de.profile() as prof:
        c, d = a @ a, b @ b
        c.wait_to_read(), d.wait_to_read()
    ops = [r for r in prof.trace().ops if r.name == "matmul"]
    assert len(ops) == 2, ops
    spans = [(r.start, r.gpu_end if r.gpu_end is not None else r.end) for r in ops]
    overlap = spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]
    timed = sum(r.gpu_end is not None for r in ops)
    return (f"two {n}^2 matmuls on lanes {sorted({r.lane for r in ops})}; {timed}/2 with GPU end times; "
            f"intervals overlap: {overlap}")


@check
def tiled_cholesky(de, nd, eng):
    rng = np.random.default_rng(3)
    m = rng.standard_normal((1024, 1024))
    s = m @ m.T + 1024 * np.eye(1024)
    t0 = time.perf_counter()
    lower = nd.linalg.cholesky(nd.array(s, device=de.gpu(0)), tile=256).asnumpy()
    took = time.perf_counter() - t0
    err = np.linalg.norm(lower - np.linalg.cholesky(s)) / np.linalg.norm(np.linalg.cholesky(s))
    assert err < 1e-10, f"relative error {err:.2e}"
    return f"n=1024 tile 256 in {took:.3f} s, relative error {err:.1e}"


@check
def recorded_plan_as_cuda_graph(de, nd, eng):
    x0 = np.linspace(-1, 1, 4096)
    x = nd.array(x0, device=de.gpu(0))
    with eng.record(execute=False) as g:
        nd.add(x * 0.5, 1.0, out=x)
    plan = g.compile()
    for _ in range(10):
        plan.run()
    want = x0.copy()
    for _ in range(10):
        want = want * 0.5 + 1.0
    np.testing.assert_allclose(x.asnumpy(), want, rtol=1e-14)
    assert plan.mode == "gpu", plan.why_imperative
    assert plan.cuda_graph is not None, plan.why_no_graph
    return f"{plan!r}: {plan.graph_launches} graph launches"


@check
def dlpack_and_cuda_array_interface(de, nd, eng):
    done = []
    x = nd.array(np.arange(12.0).reshape(3, 4), device=de.gpu(0))
    if _simulated(eng):
        return "skipped: simulated GPU memory is host memory (no CUDA pointers to share)"
    iface = x.__cuda_array_interface__
    assert iface["shape"] == (3, 4), iface
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None:
        c = cupy.from_dlpack(x)
        np.testing.assert_array_equal(cupy.asnumpy(c), np.arange(12.0).reshape(3, 4))
        back = nd.from_dlpack(cupy.arange(5.0))
        np.testing.assert_array_equal(back.asnumpy(), np.arange(5.0))
        done.append("CuPy")
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        t = torch.from_dlpack(x)
        assert t.is_cuda and float(t.sum()) == 66.0
        back = nd.from_dlpack(torch.arange(4.0, device="cuda"))
        np.testing.assert_array_equal(back.asnumpy(), np.arange(4.0))
        done.append("PyTorch")
    return "__cuda_array_interface__" + "".join(f", DLPack both ways with {n}" for n in done)


def _simulated(eng) -> bool:
    import depengine as de

    return eng.gpu_runtime(de.gpu(0)).name == "sim"


def _run_checks() -> list[tuple[str, bool, float, str]]:
    import depengine as de
    import ops as nd

    results = []
    with de.Engine("perdevice") as eng:
        nd.set_engine(eng)
        try:
            for fn in _CHECKS:
                t0 = time.perf_counter()
                try:
                    detail = fn(de, nd, eng)
                    ok = True
                except Exception as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()
                took = time.perf_counter() - t0
                results.append((fn.__name__, ok, took, detail))
                print(f"{'PASS' if ok else 'FAIL'} {fn.__name__} ({took:.2f} s): {detail}", flush=True)
        finally:
            nd.set_engine(None)
    return results


def _run_pytest() -> tuple[bool, str]:
    try:
        import hypothesis  # noqa: F401
        import pytest  # noqa: F401
    except ImportError as exc:
        return True, f"skipped: {exc.name} is not installed here"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    if os.environ.get("DEPENGINE_GPU") != "sim":
        env["DEPENGINE_TEST_GPU"] = "real"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           "tests/test_ops.py", "tests/test_nvrtc.py", "tests/test_record.py", "-k", "gpu or nvrtc or GPU"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    tail = (out.stdout + out.stderr).strip().splitlines()
    print("\n".join(tail[-40:]))
    return out.returncode == 0, tail[-1] if tail else "no output"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-pytest", action="store_true", help="only the built-in checks")
    p.add_argument("--sim", action="store_true",
                   help="dry run on the simulated runtime (tests this script on a machine without a GPU)")
    args = p.parse_args(argv)
    if args.sim:
        os.environ["DEPENGINE_GPU"] = "sim"
    elif os.environ.get("DEPENGINE_GPU"):
        print(f"note: ignoring DEPENGINE_GPU={os.environ['DEPENGINE_GPU']!r}: this check uses the real GPU")
        del os.environ["DEPENGINE_GPU"]
    import depengine as de

    try:
        de.gpu(0)
    except de.DeviceUnavailableError as exc:
        print(f"no usable GPU: {exc}")
        return 2
    t0 = time.perf_counter()
    results = _run_checks()
    pytest_ok, pytest_line = (True, "skipped (--no-pytest)") if args.no_pytest else _run_pytest()
    runtime = "simulated runtime (dry run)" if args.sim else "real runtime"
    print(f"\nsummary ({runtime})")
    for name, ok, took, _ in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {took:7.2f} s  {name}")
    print(f"  {'PASS' if pytest_ok else 'FAIL'}  GPU tests on the {runtime}: {pytest_line}")
    failed = sum(not ok for _, ok, _, _ in results) + (not pytest_ok)
    print(f"{len(results) + 1 - failed}/{len(results) + 1} passed in {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
