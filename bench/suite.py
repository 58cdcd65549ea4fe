"""``depengine bench``: scheduling throughput and METG, peers side by side.

Default (a few minutes): throughput of empty tasks on stencil_1d, then a
METG(50%) sweep with busy_wait, for every installed system.  ``--quick``
shrinks everything to seconds.  Each figure is the median of ``--repeats``
runs (at least 3), each validated against a serial evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata

from scheduler import usable_cores

from .kernels import KERNELS, Kernel
from .metg import Measurement, Metg, efficiencies, metg
from .plot import efficiency_plot
from .systems import available_systems, get_system, validate
from .taskbench import PATTERNS, Graph

__all__ = ["main", "measure"]


def measure(system, graphs: list[Graph], kernel: Kernel, workers: int, repeats: int) -> Measurement:
    """Run ``system`` ``repeats`` times on ``graphs``, validating every run."""
    g0 = graphs[0]
    m = Measurement(system.name, g0.pattern, kernel.name, kernel.iterations, g0.width, g0.steps,
                    len(graphs), workers, sum(g.ntasks() for g in graphs))
    for _ in range(repeats):
        run = system.run(graphs, kernel, workers)
        validate(graphs, run)
        m.seconds.append(run.seconds)
    return m


def machine_info() -> dict:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for pkg in ("depengine", "numpy", "numba", "dask", "distributed"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"cores": usable_cores(), "cpu_count": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version(), "platform": platform.platform(),
            "packages": versions, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        frac = self.done / self.total
        elapsed = time.monotonic() - self.start
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        line = f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s {label}"
        if self.tty:
            sys.stderr.write("\r" + line[:118].ljust(118))
            if self.done == self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def sweep_sizes(kernel: Kernel, start_us: float, min_us: float) -> list[int]:
    """Iteration counts from ``start_us`` per task down to ``min_us``, halving each time."""
    probe = kernel.scaled(200_000)
    probe.warm_up()
    t0 = time.perf_counter()
    probe.run(0, 0)
    per_us = 200_000 / max((time.perf_counter() - t0) * 1e6, 1e-3)
    sizes = []
    us = start_us
    while us >= min_us:
        sizes.append(max(1, int(us * per_us)))
        us /= 2
    return sizes


def run_suite(args) -> dict:
    systems = [get_system(n) for n in args.systems] if args.systems else available_systems()
    workers = args.workers or usable_cores()
    graphs = [Graph(args.pattern, args.width, args.steps, args.radix, args.period, args.fraction, index=k)
              for k in range(args.graphs)]
    result: dict = {"machine": machine_info(), "workers": workers,
                    "params": {k: v for k, v in vars(args).items() if k not in ("json", "plot")},
                    "throughput": [], "sweep": [], "metg": []}
    sweep_kernel = Kernel(args.kernel if args.kernel != "empty" else "busy_wait")
    sizes = sweep_sizes(sweep_kernel, args.start_us, args.min_us) if args.sweep else []
    progress = Progress(len(systems) * (1 + len(sizes)), enabled=not args.no_progress)

    for system in systems:  # throughput of empty tasks (or the given kernel, unswept)
        kernel = Kernel(args.kernel, args.iterations if args.kernel != "empty" else 0)
        kernel.warm_up()
        m = measure(system, graphs, kernel, workers, args.repeats)
        result["throughput"].append(m)
        progress.step(f"{system.name}: {m.us_per_task:.1f} us/task")

    if sizes:
        sweep_graphs = [Graph(args.pattern, args.sweep_width, args.sweep_steps, args.radix, args.period,
                              args.fraction, index=k) for k in range(args.graphs)]
        sweep_kernel.warm_up()
        for system in systems:
            below = 0
            for iters in sizes:
                if below >= 2:  # far below 50% twice: smaller tasks only get worse
                    progress.step(f"{system.name}: skipped")
                    continue
                m = measure(system, sweep_graphs, sweep_kernel.scaled(iters), workers, args.repeats)
                result["sweep"].append(m)
                eff = efficiencies(result["sweep"])
                below = below + 1 if eff[id(m)] < 0.25 else 0
                progress.step(f"{system.name}: {m.granularity_us:.0f} us granularity")
        eff = efficiencies(result["sweep"])
        result["metg"] = [metg(s.name, result["sweep"], eff) for s in systems]
        result["efficiency"] = eff
    return result


def summary_table(result: dict) -> str:
    metgs: dict[str, Metg] = {m.system: m for m in result["metg"]}
    lines = []
    p = result["params"]
    lines.append(f"pattern={p['pattern']} width={p['width']} steps={p['steps']} graphs={p['graphs']} "
                 f"workers={result['workers']} kernel={p['kernel']} "
                 f"(median of {p['repeats']} runs, min-max in brackets)")
    head = f"{'system':22s} {'us/task':>22s} {'tasks/s':>10s}"
    if metgs:
        head += f" {'METG(50%) ' + p['kernel'] if p['kernel'] != 'empty' else 'METG(50%) busy_wait':>24s}"
    lines.append(head)
    for m in result["throughput"]:
        lo, hi = min(m.seconds) / m.ntasks * 1e6, max(m.seconds) / m.ntasks * 1e6
        row = f"{m.system:22s} {m.us_per_task:8.1f} [{lo:5.1f}-{hi:6.1f}] {m.tasks_per_second:10.0f}"
        if metgs:
            row += f" {metgs[m.system].describe() if m.system in metgs else 'n/a':>24s}"
        lines.append(row)
    if metgs:
        ref = metgs.get("dask-threaded")
        for name in ("depengine-threaded", "depengine-replay", "dask-on-depengine"):
            ours = metgs.get(name)
            if ref and ours and ref.value_us and ours.value_us:
                lines.append(f"METG ratio dask-threaded / {name}: {ref.value_us / ours.value_us:.1f}x")
        floor = metgs.get("static-threads")
        if floor and floor.value_us:  # what no Python scheduler on this machine can beat
            lines.append(f"METG of static-threads (no scheduler: the floor here): {floor.value_us:.1f} us")
    return "\n".join(lines)


def to_json(result: dict) -> dict:
    out = {k: v for k, v in result.items() if k not in ("throughput", "sweep", "metg", "efficiency")}
    eff = result.get("efficiency", {})
    out["throughput"] = [m.to_json() for m in result["throughput"]]
    out["sweep"] = [dict(m.to_json(), efficiency=eff.get(id(m))) for m in result["sweep"]]
    out["metg"] = [{"system": m.system, "metg_us": m.value_us, "bound": m.bound} for m in result["metg"]]
    return out


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="depengine bench", description=__doc__)
    p.add_argument("--pattern", default="stencil_1d", choices=PATTERNS)
    p.add_argument("--width", type=int, default=None, help="columns (default 16; quick 4)")
    p.add_argument("--steps", type=int, default=None, help="steps for throughput (default 500; quick 20)")
    p.add_argument("--graphs", type=int, default=1, help="independent graphs run at once")
    p.add_argument("--radix", type=int, default=3)
    p.add_argument("--period", type=int, default=3)
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--kernel", default="empty", choices=KERNELS)
    p.add_argument("--iterations", type=int, default=1000,
                   help="kernel size for an unswept non-empty kernel")
    p.add_argument("--sweep", action="store_true",
                   help="METG sweep (on by default without --pattern/--kernel)")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--start-us", type=float, default=None, help="largest task in the sweep (default 4000)")
    p.add_argument("--min-us", type=float, default=None, help="smallest task in the sweep (default 2)")
    p.add_argument("--systems", nargs="+", default=None, help="systems to run (default: all installed)")
    p.add_argument("--workers", type=int, default=None, help="workers for every system (default: cores)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes: runs in seconds")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--plot", default=None, help="write the efficiency plot as SVG here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--list-systems", action="store_true")
    return p


def resolve(args, argv: list[str]) -> argparse.Namespace:
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    if args.repeats < 3 and not args.quick:
        raise SystemExit("--repeats must be >= 3: every figure is a median of at least 3 runs")
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    quick = args.quick
    args.width = args.width or (4 if quick else 16)
    args.steps = args.steps or (20 if quick else 500)
    args.sweep_width = args.width if "--width" in given else (4 if quick else 8)
    args.sweep_steps = args.steps if "--steps" in given else (10 if quick else 50)
    args.start_us = args.start_us or (200.0 if quick else 4000.0)
    args.min_us = args.min_us or (25.0 if quick else 2.0)
    # Bare `depengine bench` sweeps; naming a pattern or kernel without --sweep does not.
    args.sweep = (args.sweep or not ({"--pattern", "--kernel"} & given)) and not args.no_sweep
    for name in ("width", "steps", "graphs", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_systems:
        from .systems import all_systems

        for s in all_systems():
            print(f"{s.name:22s} {'installed' if s.available() else 'missing: ' + ', '.join(s.requires)}")
        return 0
    args = resolve(args, argv)
    try:
        result = run_suite(args)
    except ValueError as exc:
        parser.error(str(exc))
    print(summary_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(to_json(result), f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        if not result["sweep"]:
            print("--plot needs a sweep; nothing plotted", file=sys.stderr)
        else:
            with open(args.plot, "w") as f:
                f.write(efficiency_plot(result["sweep"], result["efficiency"], result["metg"]))
            print(f"wrote {args.plot}")
    return 0
