"""METG(50%) of Task Bench across MPI ranks: depengine's mpi engine against hand-written mpi4py.

    python -m bench.mpi_metg [--ranks 2] [--width 8] [--steps 300] [--repeats 3] [--json out.json]

The same sweep as ``depengine bench --sweep`` (busy_wait kernels halving from
``--start-us`` down to ``--min-us``; efficiency against the best work rate
any run reached; METG interpolated at 50%), but the two systems take turns
at every kernel size, ``--repeats`` times each, so that the machine's drift
(2x within minutes here) hits both alike.  Every run is validated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .kernels import Kernel
from .metg import Measurement, efficiencies, metg
from .suite import sweep_sizes, to_json
from .systems import get_system, validate
from .taskbench import Graph

__all__ = ["main"]

SYSTEMS = ("depengine-mpi", "mpi4py")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--pattern", default="stencil_1d")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--start-us", type=float, default=2000.0)
    p.add_argument("--min-us", type=float, default=8.0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    systems = [get_system(s) for s in SYSTEMS]
    graphs = [Graph(args.pattern, args.width, args.steps)]
    kernel = Kernel("busy_wait")
    kernel.warm_up()
    sizes = sweep_sizes(kernel, args.start_us, args.min_us)
    print(f"METG sweep, {args.pattern} {args.width} x {args.steps} on {args.ranks} ranks, "
          f"{len(sizes)} sizes, {args.repeats} turns each, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}", flush=True)
    sweep: list[Measurement] = []
    for iters in sizes:
        k = kernel.scaled(iters)
        ms = {s.name: Measurement(s.name, args.pattern, k.name, iters, args.width, args.steps, 1, args.ranks,
                                  graphs[0].ntasks()) for s in systems}
        for _ in range(args.repeats):
            for s in systems:
                run = s.run(graphs, k, args.ranks)
                validate(graphs, run)
                ms[s.name].seconds.append(run.seconds)
        sweep.extend(ms.values())
        print("  " + "   ".join(f"{m.system} {m.granularity_us:8.1f} us" for m in ms.values()), flush=True)
    eff = efficiencies(sweep)
    print(f"\n{'iterations':>10s} " + " ".join(f"{s:>26s}" for s in SYSTEMS))
    for i in range(0, len(sweep), len(SYSTEMS)):
        row = sweep[i:i + len(SYSTEMS)]
        print(f"{row[0].iterations:10d} " + " ".join(
            f"{m.granularity_us:10.1f} us eff {eff[id(m)]:5.2f}      " for m in row))
    results = {s: metg(s, sweep, eff) for s in SYSTEMS}
    for s, m in results.items():
        print(f"METG(50%) {s:14s} {m.describe()}")
    ours, ref = results["depengine-mpi"], results["mpi4py"]
    if ours.value_us and ref.value_us:
        print(f"ratio depengine-mpi / mpi4py: {ours.value_us / ref.value_us:.2f} (target: within 3x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(to_json({"throughput": [], "sweep": sweep, "metg": list(results.values()),
                               "efficiency": eff, "params": vars(args)}), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
