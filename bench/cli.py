"""The ``depengine`` command: demo, bench, and the profiler's trace/viz/stats tools."""

from __future__ import annotations

import sys

__all__ = ["main"]

USAGE = """depengine <command> [options]

commands:
  demo       the main job: a tiled Cholesky through the engine, checked and timed
  bench      scheduling throughput and METG against peers (depengine bench --help)
  trace      run a Python script with profiling on and write its trace
  viz        render a trace as a dependency graph and/or a timeline
  stats      print per-op statistics of a trace
  report     write one self-contained HTML report of a trace (timeline, graph, stats)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        from .suite import main as bench_main

        return bench_main(rest)
    if command == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if command in ("trace", "viz", "stats", "report"):
        from viz.cli import main as viz_main

        return viz_main([command, *rest])
    print(f"depengine: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
