"""The ``depengine`` command: one dispatcher, each subcommand implemented where it belongs.

The installed tools (``trace``, ``viz``, ``stats``, ``report``) live in viz/; ``demo``
and ``bench`` live in bench/, the repository's benchmarks, which are not
installed: they run from a source checkout (the editable install that
``make`` does finds it beside this package).  Subcommands are named here as
``module:function`` and imported only when run, so this package does not
depend on the packages above it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

__all__ = ["main"]

COMMANDS = {
    "demo": ("bench.demo:main", "the main job: a tiled Cholesky through the engine, checked and timed"),
    "bench": ("bench.suite:main", "scheduling throughput and METG against peers (depengine bench --help)"),
    "trace": ("viz.cli:trace_main", "run a Python script with profiling on and write its trace"),
    "viz": ("viz.cli:viz_main", "render a trace as a dependency graph and/or a timeline"),
    "stats": ("viz.cli:stats_main", "print per-op statistics of a trace"),
    "report": ("viz.cli:report_main", "one self-contained HTML report of a trace: timeline, graph, stats"),
}


def usage() -> str:
    lines = ["depengine <command> [options]", "", "commands:"]
    lines += [f"  {name:10s} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines) + "\n"


def _load(target: str):
    module, _, function = target.partition(":")
    if module.split(".")[0] == "bench":
        checkout = Path(__file__).resolve().parent.parent
        if not ((checkout / "pyproject.toml").is_file() and (checkout / "bench" / "suite.py").is_file()):
            raise SystemExit("depengine: demo and bench run from a source checkout of depengine "
                             "(bench/ is not installed): clone the repository and run `make demo`")
        if str(checkout) not in sys.path:
            sys.path.insert(0, str(checkout))
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"depengine: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return _load(COMMANDS[command][0])(rest)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
