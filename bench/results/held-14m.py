"""Results the user keeps: 40 iterations of ``keep.append(a * 2.0 + 1.0)`` (issue 14, fourth follow-up).

    PYTHONPATH=. python bench/results/held-14m.py N      (N elements per array)
"""

import sys
import time

import depengine as de
import ops as nd
from ops import memory

n = int(sys.argv[1])
eng = de.Engine("perdevice", workers=2)
nd.set_engine(eng)
a = nd.ones(n)
(a * 1.0).wait_to_read()
keep = []
t0 = time.perf_counter()
for _ in range(40):
    t = a * 2.0
    keep.append(t + 1.0)
keep[-1].wait_to_read()
print(n * 8, "bytes:", f"{(time.perf_counter() - t0) * 1e3:.1f} ms for 40 iterations", memory.pool_stats())
nd.set_engine(None)
eng.close()
