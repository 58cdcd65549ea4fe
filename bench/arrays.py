"""ops/ arrays against NumPy, numexpr and JAX (CPU, x64), all measured in one run.

    python -m bench.arrays [--repeats 5] [--quick] [--json out.json] [--only chain100,expr,...]

Workloads (issue 14's targets in brackets):

- ``chain100``, ``chain10k``, ``chain1m``: ``c = c + b`` repeated (2000, 2000, 100 times), per op,
  from the first push to the result being ready [100 elements <= 8 us/op; 10k <= 1.5x NumPy; 1M <= 1.0x];
  ``chain5k``, ``chain30k`` (2000, 1000 times) between them, where malloc's heap (5k) and the switch
  from running an op on the pushing thread to a worker (30k, 240 KB) lie.  "ops, pusher ahead" starts
  each chain from an array not yet made, so the pusher runs ahead of the worker; "c += b" runs the
  same chain with the in-place operator, NumPy's and ops/'
- ``two1m``: two independent 1M-element chains interleaved [<= 0.7x NumPy doing both]; alongside,
  NumPy running each chain in a thread of its own: what two threads get from the machine right then
- ``expr``: ``exp((x*2+y)*(x-y))``, x 1000x1000, y (1000,) broadcast: imperative [<= 1.2x NumPy] and
  recorded, compiled (fused) and replayed [<= 0.6x NumPy]; numexpr (2 threads) and ``jax.jit`` alongside
- ``mm64``: ``(a @ a).sum()`` 64x64, result read [<= 3x NumPy]; ``mm2048``: ``a @ a`` 2048x2048 [<= 1.0x]
- ``cold``: in fresh processes, the first tiny op after ``import ops`` [<= 0.3 s] and the first tiled
  Cholesky (n=4096, tile 512) against the second in the same process [<= 1.5x]
- ``small``: where the time of one 100-element ``c = c + b`` goes, part by part (us, best of rounds)

Each figure is the best of ``--repeats`` rounds; within a round every system runs once, in turn, so
that drift of the shared machine hits all of them alike; each round starts with the next system, and
each turn starts ``SETTLE`` s after the last one ended.  Ratios compare figures of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

import ops as nd

ALL = ("chain100", "chain10k", "chain5k", "chain30k", "chain1m", "two1m", "expr", "mm64", "mm2048", "cold",
       "small")
# seconds between two systems' turns: a peer's idle threads keep spinning after it returns (NumPy's
# OpenBLAS helper for about 0.1 s: ops' 2048 matmul took 169-236 ms right after NumPy's and
# 122-158 ms 0.3 s later) and would be charged to whichever system runs next
SETTLE = 0.2


def _peers():
    peers = {}
    try:
        import numexpr

        numexpr.set_num_threads(2)
        peers["numexpr"] = numexpr
    except ImportError:
        pass
    try:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import jax

        jax.config.update("jax_enable_x64", True)
        peers["jax"] = jax
    except ImportError:
        pass
    return peers


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _chained(zeros, wrap, ready, n: int, b0, steps: int, ahead: bool = False) -> float:
    """Seconds for ``steps`` of ``c = c + b``, from the first op to the result being ready.

    ``ahead``: the chain starts from ``zeros(n)`` just pushed, not yet made, so the first op
    waits for it and the pusher runs ahead of the worker (ops/ then bounds its buffers in flight).
    """
    c, b = zeros(n), wrap(b0)
    if not ahead:
        ready(c)
    t0 = time.perf_counter()
    for _ in range(steps):
        c = c + b
    ready(c)
    return time.perf_counter() - t0


def _in_place(zeros, wrap, ready, n: int, b0, steps: int) -> float:
    """Seconds for ``steps`` of ``c += b`` (NumPy's and ops/' in-place operator)."""
    c, b = zeros(n), wrap(b0)
    ready(c)
    t0 = time.perf_counter()
    for _ in range(steps):
        c += b
    ready(c)
    return time.perf_counter() - t0


def _python_bodies(fn, *args):
    """``fn(*args)`` with ops/ kernels called from Python op bodies instead of native ones."""
    from ops import _cpu
    from ops import math as front

    _cpu.NATIVE_BODIES = False
    front._FLAT.clear()  # (the fast path remembers which bodies it makes)
    try:
        return fn(*args)
    finally:
        _cpu.NATIVE_BODIES = True
        front._FLAT.clear()


def _chain(n: int, steps: int, peers) -> dict:
    b0 = np.random.default_rng(0).random(n)
    systems = {
        "numpy": lambda: _chained(np.zeros, np.asarray, lambda c: None, n, b0, steps),
        "ops": lambda: _chained(nd.zeros, nd.array, nd.NDArray.wait_to_read, n, b0, steps),
        "ops, Python bodies": lambda: _python_bodies(_chained, nd.zeros, nd.array, nd.NDArray.wait_to_read, n,
                                                     b0, steps),
        "ops, pusher ahead": lambda: _chained(nd.zeros, nd.array, nd.NDArray.wait_to_read, n, b0, steps,
                                              ahead=True),
        "numpy c += b": lambda: _in_place(np.zeros, np.asarray, lambda c: None, n, b0, steps),
        "ops c += b": lambda: _in_place(nd.zeros, nd.array, nd.NDArray.wait_to_read, n, b0, steps),
    }
    if "jax" in peers:
        jnp = peers["jax"].numpy
        ready = peers["jax"].block_until_ready
        systems["jax eager"] = lambda: _chained(jnp.zeros, jnp.asarray, ready, n, b0, steps)
    return systems


def _two_chains(peers) -> dict:
    n, steps = 1_000_000, 50
    b0 = np.random.default_rng(0).random(n)

    def numpy_run():
        c1, c2, b = np.zeros(n), np.zeros(n), b0
        for _ in range(steps):
            c1 = c1 + b
            c2 = c2 + b

    def ops_run():
        c1, c2, b = nd.zeros(n), nd.zeros(n), nd.array(b0)
        c2.wait_to_read()
        t0 = time.perf_counter()
        for _ in range(steps):
            c1 = c1 + b
            c2 = c2 + b
        c1.wait_to_read()
        c2.wait_to_read()
        return time.perf_counter() - t0
    def numpy_two_threads():  # what the machine gives two threads at this moment (NumPy drops the GIL)
        def chain():
            c = np.zeros(n)
            for _ in range(steps):
                c = c + b0
        threads = [threading.Thread(target=chain) for _ in range(2)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0
    return {"numpy": lambda: _time(numpy_run), "ops": ops_run,
            "numpy, one chain per thread": numpy_two_threads}


def _expr(peers) -> dict:
    rng = np.random.default_rng(0)
    xv, yv = rng.random((1000, 1000)), rng.random(1000)
    x, y = nd.array(xv), nd.array(yv)
    eng = nd.engine()
    with eng.record() as g:
        out = ((x * 2 + y) * (x - y)).exp()
    plan = g.compile()
    out.wait_to_read()

    def imperative():
        t0 = time.perf_counter()
        ((x * 2 + y) * (x - y)).exp().wait_to_read()
        return time.perf_counter() - t0

    def replayed():
        t0 = time.perf_counter()
        plan.run()
        out.wait_to_read()
        return time.perf_counter() - t0

    systems = {"numpy": lambda: _time(lambda: np.exp((xv * 2 + yv) * (xv - yv))),
               "ops": imperative, "ops replayed (fused)": replayed}
    if "numexpr" in peers:
        ne = peers["numexpr"]
        names = {"x": xv, "y": yv}
        systems["numexpr"] = lambda: _time(lambda: ne.evaluate("exp((x*2+y)*(x-y))", local_dict=names))
    if "jax" in peers:
        jax, jnp = peers["jax"], peers["jax"].numpy
        xj, yj = jnp.asarray(xv), jnp.asarray(yv)
        f = jax.jit(lambda a, b: jnp.exp((a * 2 + b) * (a - b)))
        f(xj, yj).block_until_ready()
        systems["jax.jit"] = lambda: _time(lambda: f(xj, yj).block_until_ready())
        systems["jax eager"] = lambda: _time(lambda: jnp.exp((xj * 2 + yj) * (xj - yj)).block_until_ready())
    return systems


def _matmul(n: int, with_sum: bool, reps: int) -> dict:
    av = np.random.default_rng(0).random((n, n))
    a = nd.array(av)
    (a @ a).wait_to_read()

    def numpy_run():
        for _ in range(reps):
            r = av @ av
            if with_sum:
                float(r.sum())

    def ops_run():
        t0 = time.perf_counter()
        for _ in range(reps):
            r = a @ a
            if with_sum:
                float(r.sum())
            else:
                r.wait_to_read()
        return time.perf_counter() - t0
    return {"numpy": lambda: _time(numpy_run), "ops": ops_run}


_COLD_OP = ("import time, ops as nd\nt0 = time.perf_counter()\n(nd.ones(3) + 1).asnumpy()\n"
            "print(time.perf_counter() - t0)")
_COLD_CHOL = ("import time, numpy as np, ops as nd\nfrom bench.cholesky_demo import spd_matrix\n"
              "a = nd.array(spd_matrix(4096)); a.wait_to_read()\nts = []\nfor _ in range(2):\n"
              "    t0 = time.perf_counter(); nd.linalg.cholesky(a, tile=512).wait_to_read()\n"
              "    ts.append(time.perf_counter() - t0)\nprint(ts[0], ts[1])")


def _fresh(code: str) -> list[float]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    return [float(v) for v in out.stdout.split()]


def cold(repeats: int) -> dict:
    """Fresh processes (numba's cache warmed by the first): first tiny op; first and second Cholesky."""
    _fresh(_COLD_OP)
    op = min(_fresh(_COLD_OP)[0] for _ in range(repeats))
    chol = [_fresh(_COLD_CHOL) for _ in range(max(1, repeats // 2))]
    first, second = min(c[0] for c in chol), min(c[1] for c in chol)
    return {"first tiny op after import (s)": op, "first cholesky (s)": first, "second cholesky (s)": second,
            "first / second": first / second}


def small(repeats: int) -> dict:
    """The parts of one small op, each timed alone on this thread (best of ``repeats`` x 20 000)."""
    import depengine as de
    from ops import _cpu, _fast, _kernels
    from ops import math as front
    from ops.array import NDArray

    eng = nd.engine()
    a, b = nd.ones(100), nd.ones(100)
    out = (a + b).wait_to_read()
    w = np.dtype(np.float64)
    fn, _ = _cpu.elementwise(eng, "add", w, out, (a, b))
    spec = front._FLAT[("add", "d", "d", (100,))]  # what the fast path found for a + b
    na, nb = np.ones(100), np.ones(100)
    v = eng.new_var("v")
    parts = {
        "numpy c + b (allocates)": lambda: na + nb,
        "op body (a native body on the compiled core)": lambda: fn(None),
        "a + b, pushed (the whole front end)": lambda: a + b,
        f"  of which allocate, pack, push (_fast.push, {_kernels.CALLS})": lambda: _fast.push(spec.c, a, b),
        "  of which new array (new_var + buffer)":
            lambda: NDArray._cpu_owner(eng, eng.new_var("add"), (100,), w, a.device, 100, (1,)),
        "  of which Engine.new_var": lambda: eng.new_var("x"),
        "  of which push of an empty op (pusher's side)": lambda: eng.push(_noop, (), [v]),
        "general path: dtypes, layout, entry point, block":
            lambda: (front.types("add", a, b, a.device), _cpu.elementwise(eng, "add", w, out, (a, b))),
    }
    times = {}
    for name, f in parts.items():
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(20_000):
                f()
            best = min(best, (time.perf_counter() - t0) / 20_000 * 1e6)
            eng.wait_all()
        times[name] = best
    with de.Engine("naive") as naive:  # the whole op, run where it is pushed: no thread hand-off
        nd.set_engine(naive)
        try:
            c, bb = nd.ones(100), nd.ones(100)
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(20_000):
                    c = c + bb
                best = min(best, (time.perf_counter() - t0) / 20_000 * 1e6)
            times["whole op on the naive engine"] = best
        finally:
            nd.set_engine(None)
    times["calls through"] = _kernels.CALLS
    return times


def _noop(ctx):
    pass


def run(names, repeats: int, quick: bool) -> dict:
    peers = _peers()
    scale = 4 if quick else 1
    workloads = {
        "chain100": lambda: (_chain(100, 2000 // scale, peers), 2000 // scale, "us/op"),
        "chain10k": lambda: (_chain(10_000, 2000 // scale, peers), 2000 // scale, "us/op"),
        "chain5k": lambda: (_chain(5_000, 2000 // scale, peers), 2000 // scale, "us/op"),
        "chain30k": lambda: (_chain(30_000, 1000 // scale, peers), 1000 // scale, "us/op"),
        "chain1m": lambda: (_chain(1_000_000, 100 // scale, peers), 100 // scale, "us/op"),
        "two1m": lambda: (_two_chains(peers), 1, "ms"),
        "expr": lambda: (_expr(peers), 1, "ms"),
        "mm64": lambda: (_matmul(64, True, 500 // scale), 500 // scale, "us/op"),
        "mm2048": lambda: (_matmul(2048, False, 1), 1, "ms"),
    }
    results = {}
    for name in names:
        if name in ("cold", "small"):
            results[name] = cold(repeats) if name == "cold" else small(repeats)
            continue
        systems, per, unit = workloads[name]()
        best = {s: float("inf") for s in systems}
        order = list(systems)
        for r in range(repeats):
            for s in order[r % len(order):] + order[:r % len(order)]:  # each round starts with another
                time.sleep(SETTLE)
                best[s] = min(best[s], systems[s]())
        factor = 1e6 / per if unit == "us/op" else 1e3
        figures = {s: t * factor for s, t in best.items()}
        figures["ops / numpy"] = figures["ops"] / figures["numpy"]
        if "ops c += b" in figures:
            figures["c += b: ops / numpy"] = figures["ops c += b"] / figures["numpy c += b"]
        if "ops replayed (fused)" in figures:
            figures["replayed / numpy"] = figures["ops replayed (fused)"] / figures["numpy"]
        results[name] = {"unit": unit, **figures}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(ALL))
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in ALL]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {', '.join(ALL)}")
    results = run(names, args.repeats, args.quick)
    for name, figures in results.items():
        print(f"{name}:")
        for key, value in figures.items():
            print(f"  {key:32} {value:.3f}" if isinstance(value, float) else f"  {key:32} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
