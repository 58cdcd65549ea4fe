"""Real parallelism: two independent ~100 ms numba ops, on 1 and on 2 CPU workers.

    python -m bench.overlap [--ms 100] [--repeats 5]

The kernel is a serial ``@numba.njit(nogil=True)`` spin loop calibrated to
``--ms`` milliseconds.  Each engine kind pushes two such ops with no shared
var and waits; the figure is wall time divided by the serial time of the two
kernels called back to back on the main thread, measured in the same run
(median of ``--repeats``).  Two workers should give about 0.5; one worker
about 1.0.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba

import depengine as de

__all__ = ["main"]


@numba.njit(nogil=True, cache=True)
def spin(n):
    acc = 0
    for k in range(n):
        acc = (acc * 1103515245 + k) % 2147483647
    return acc


def _calibrate(ms: float) -> int:
    spin(1000)
    t = time.perf_counter()
    spin(5_000_000)
    per = (time.perf_counter() - t) / 5_000_000
    return max(10_000, int(ms / 1000 / per))


def _pair(kind: str, workers: int, n: int) -> float:
    with de.Engine(kind, workers=workers) as eng:
        t = time.perf_counter()
        for _ in range(2):
            eng.push(lambda ctx: spin(n), writes=[eng.new_var()])
        eng.wait_all()
        return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ms", type=float, default=100.0)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    n = _calibrate(args.ms)
    rows = []
    for kind, workers in (("perdevice", 2), ("threaded", 2), ("perdevice", 1), ("threaded", 1)):
        ratios = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            spin(n)
            spin(n)
            serial = time.perf_counter() - t
            ratios.append(_pair(kind, workers, n) / serial)
        rows.append((kind, workers, serial, statistics.median(ratios), min(ratios), max(ratios)))
    print(f"two independent numba ops of ~{args.ms:.0f} ms each; wall / serial time, "
          f"median of {args.repeats}")
    for kind, workers, serial, med, lo, hi in rows:
        print(f"  {kind:<10} {workers} worker(s): {med:.2f}x serial ({lo:.2f}-{hi:.2f}; "
              f"serial {serial * 1e3:.0f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
