"""The report's targets: ``depengine report`` on a 100 000-op trace in <= 5 s, first render in <= 2 s.

    python -m bench.report [--ops 100000] [--workers 2] [--keep DIR]

Records a real run of ``--ops`` empty ops (8 columns of a stencil-like
chain, four op names) on the threaded engine with profiling on, saves the
trace (format 2; ``--format 1`` writes the older layout), then measures,
each in a fresh process: ``depengine report`` end to end (interpreter
start, reading and checking the trace, analysis, graph with ``dot``,
writing the HTML), ``depengine stats`` on the same file (the peer: reading
and checking the trace plus the statistics), and the peak memory of
``Trace.load`` against the file's size.  Each command's CPU time (user +
system, its ``dot`` included) is printed beside its wall time: on a shared
machine the wall time is the CPU time divided by the share of a core the
command got.  Then headless Chromium opens the report offline and the page
reports when its first frame was drawn (``performance.now()``: from
navigation start, HTML parsing, JSON parsing and the first timeline frame
included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import depengine as de

__all__ = ["main"]

NAMES = ("stencil", "update", "reduce", "halo")


def record(n_ops: int, workers: int, path: str, version: int = 2) -> None:
    columns = 8
    with de.profile() as prof, de.Engine("threaded", workers=workers) as eng:
        vs = [eng.new_var(f"x{i}") for i in range(columns)]
        for step in range(n_ops // columns):
            for i in range(columns):
                eng.push(lambda ctx: None, reads=[vs[i - 1], vs[(i + 1) % columns]], writes=[vs[i]],
                         name=NAMES[(step + i) % len(NAMES)])
        eng.wait_all()
    if version == 2:
        prof.save(path)
    else:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(prof.trace().to_chrome(version), f)


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, of the command and its children) of running ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


HWM = "print(int(next(x for x in open('/proc/self/status') if x.startswith('VmHWM')).split()[1]) * 1024)"
PEAK = "import sys; from depengine.trace import Trace; t = Trace.load(sys.argv[1]); " + HWM
BASE = "import depengine._trace_io; " + HWM


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--keep", default=None, help="keep the trace and report in this folder")
    p.add_argument("--format", type=int, choices=(1, 2), default=2, help="trace file format to write")
    args = p.parse_args(argv)
    folder = args.keep or tempfile.mkdtemp(prefix="depengine-report-bench-")
    os.makedirs(folder, exist_ok=True)
    trace, html = os.path.join(folder, "trace.json"), os.path.join(folder, "report.html")
    record(args.ops, args.workers, trace, args.format)
    cli = [sys.executable, "-m", "depengine"]
    print(f"trace: {args.ops} ops, format {args.format}, {os.path.getsize(trace) / 1e6:.1f} MB")
    for _ in range(args.repeats):
        (report_s, report_cpu), (stats_s, stats_cpu) = (timed([*cli, "report", trace, "-o", html]),
                                                         timed([*cli, "stats", trace]))
        print(f"depengine report: {report_s:.2f} s (cpu {report_cpu:.2f} s)   peer, depengine stats: "
              f"{stats_s:.2f} s (cpu {stats_cpu:.2f} s); report / stats = {report_s / stats_s:.2f}   "
              f"html {os.path.getsize(html) / 1e6:.1f} MB")
    peak = int(subprocess.run([sys.executable, "-c", PEAK, trace], capture_output=True, text=True,
                              check=True).stdout)
    base = int(subprocess.run([sys.executable, "-c", BASE], capture_output=True, text=True,
                              check=True).stdout)
    size = os.path.getsize(trace)
    print(f"Trace.load peak RSS: {peak / 1e6:.0f} MB ({(peak - base) / 1e6:.0f} MB over the "
          f"{base / 1e6:.0f} MB of an interpreter with the reader imported), file {size / 1e6:.0f} MB: "
          f"{(peak - base) / size:.2f}x the file")
    from .browser import CHROMIUM, MISSING, run_page

    if CHROMIUM is None:
        print(f"first render: skipped ({MISSING})")
        return 0
    with open(html, encoding="utf-8") as f:
        page = f.read()
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        found = run_page(page, "return window.depengineReport.firstRenderMs();", timeout=120)
        wall = time.perf_counter() - t0
        print(f"first render in headless Chromium: {found['result'] / 1e3:.2f} s after navigation "
              f"(whole Chromium run {wall:.2f} s), script errors: {len(found['errors'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
