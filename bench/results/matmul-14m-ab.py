"""The 2048 matmul: NumPy, ops/ as built, and ops/ with its body replaced by one ``np.matmul`` call.

    PYTHONPATH=. python bench/results/matmul-14m-ab.py [2]      (2: two independent products at once)
"""

import sys
import time

import numpy as np

import ops as nd
from ops import _cpu

n = 2048
pairs = len(sys.argv) > 1 and sys.argv[1] == "2"
av = np.random.default_rng(0).random((n, n))
a, b = nd.array(av), nd.array(av.T.copy())
(a @ a).wait_to_read()
built = _cpu.matmul_body


def numpy_body(eng, x, y, out):
    xa, ya, oa = x._data, y._data, out._data
    return lambda ctx: np.matmul(xa, ya, out=oa)


def ops_run():
    t0 = time.perf_counter()
    rs = [a @ a, b @ b] if pairs else [a @ a]
    for r in rs:
        r.wait_to_read()
    return time.perf_counter() - t0


def numpy_run():
    t0 = time.perf_counter()
    for _ in range(2 if pairs else 1):
        av @ av
    return time.perf_counter() - t0


res = {"numpy": [], "ops": [], "ops np body": []}
for _ in range(6 if pairs else 8):
    for k in res:
        time.sleep(0.3)
        _cpu.matmul_body = numpy_body if k == "ops np body" else built
        res[k].append((numpy_run if k == "numpy" else ops_run)() * 1e3)
for k, v in res.items():
    print(k, f"min {min(v):.1f} med {sorted(v)[len(v) // 2]:.1f}", " ".join(f"{x:.0f}" for x in v))
