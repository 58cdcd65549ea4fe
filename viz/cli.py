"""``depengine trace``, ``depengine viz``, ``depengine stats`` and ``depengine report``.

Every output file is written whole or not at all, and only after the trace
has been read and checked: a bad trace leaves nothing behind.

A command reads one trace and keeps it to the end, so once it is read its
million objects are moved out of the garbage collector's sight
(``gc.freeze``): a collection of a 100 000-op trace costs tenths of a second,
and none could free any of it.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys

from depengine.trace import Trace, TraceError, atomic_write

from .graph import dependency_graph
from .html_report import report
from .render import GraphvizMissingError, render
from .timeline import timeline

__all__ = ["report_main", "stats_main", "trace_main", "viz_main"]


def _trace(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="depengine trace",
                                description="Run a command with profiling on and write its trace.")
    p.add_argument("-o", "--output", default="trace.json", help="trace file to write (default trace.json)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- python script.py args...")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command to run after --, e.g. depengine trace -- python script.py")
    out = os.path.abspath(args.output)
    if os.path.exists(out):
        os.remove(out)
    env = dict(os.environ, DEPENGINE_PROFILE=out)
    rc = subprocess.call(command, env=env)
    if not os.path.exists(out):
        print(f"depengine trace: {command[0]} exited with {rc} and wrote no trace "
              "(did it import depengine and push any op?)", file=sys.stderr)
        return rc or 1
    trace = Trace.load(out)
    print(f"wrote {out}: {len(trace)} ops (exit status {rc})")
    return rc


def _viz(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="depengine viz", description="Render a trace.")
    p.add_argument("trace")
    p.add_argument("--graph", help="dependency graph image (.svg, .png or .pdf)")
    p.add_argument("--dot", help="write the graph's DOT source here")
    p.add_argument("--timeline", help="timeline SVG")
    p.add_argument("--max-ops", type=int, default=200, help="summarise the graph past this many ops")
    p.add_argument("--bookkeeping", action="store_true", help="show bookkeeping ops (deletes, containers)")
    p.add_argument("--edge-labels", action="store_true", help="label edges with their var and version")
    p.add_argument("--group", choices=("auto", "ops", "groups"), default="auto",
                   help="summarise ops into groups: past --max-ops (auto), never, always")
    args = p.parse_args(argv)
    if not (args.graph or args.timeline or args.dot):
        p.error("nothing to do: give --graph, --dot and/or --timeline")
    trace = _nonempty(_load(args.trace))
    if args.graph or args.dot:
        g = dependency_graph(trace, max_ops=args.max_ops, bookkeeping=args.bookkeeping,
                             edge_labels=args.edge_labels, group=args.group)
        if args.dot:
            with atomic_write(args.dot) as f:
                f.write(g.source)
            print(f"wrote {args.dot}")
        if args.graph:
            render(g, args.graph)
            print(f"wrote {args.graph}")
    if args.timeline:
        timeline(trace, args.timeline)
        print(f"wrote {args.timeline}")
    return 0


def _stats(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="depengine stats", description="Print the statistics of a trace.")
    p.add_argument("trace")
    args = p.parse_args(argv)
    print(_load(args.trace).stats())
    return 0


def _load(path: str) -> Trace:
    """The trace at ``path``, kept by this command until it ends (see the module docstring)."""
    trace = Trace.load(path)
    gc.freeze()
    return trace


def _nonempty(trace: Trace) -> Trace:
    if not len(trace):
        raise TraceError(f"{trace.source}: the trace has no ops: nothing to draw")
    return trace


def _report(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="depengine report",
                                description="Write one self-contained HTML page that explains a trace: "
                                            "timeline, dependency graph, statistics, idle gaps.")
    p.add_argument("trace")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--max-ops", type=int, default=120, help="summarise the graph past this many ops")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    trace = _nonempty(_load(args.trace))
    report(trace, args.output, max_ops=args.max_ops, title=args.title)
    print(f"wrote {args.output}: {len(trace)} ops")
    return 0


def _run(command: str, function, argv: list[str]) -> int:
    try:
        return function(argv)
    except (TraceError, GraphvizMissingError, ValueError) as exc:
        print(f"depengine {command}: {exc}", file=sys.stderr)
        return 2


def trace_main(argv: list[str]) -> int:
    """``depengine trace``."""
    return _run("trace", _trace, argv)


def viz_main(argv: list[str]) -> int:
    """``depengine viz``."""
    return _run("viz", _viz, argv)


def stats_main(argv: list[str]) -> int:
    """``depengine stats``."""
    return _run("stats", _stats, argv)


def report_main(argv: list[str]) -> int:
    """``depengine report``."""
    return _run("report", _report, argv)
