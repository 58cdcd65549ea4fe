"""``depengine trace``, ``depengine viz`` and ``depengine stats``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from depengine.trace import Trace, TraceError

from .graph import dependency_graph
from .render import GraphvizMissingError, render
from .timeline import timeline

__all__ = ["stats_main", "trace_main", "viz_main"]


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
    p.add_argument("--max-ops", type=int, default=300, help="collapse the graph past this many ops")
    args = p.parse_args(argv)
    if not (args.graph or args.timeline or args.dot):
        p.error("nothing to do: give --graph, --dot and/or --timeline")
    trace = Trace.load(args.trace)
    if args.graph or args.dot:
        g = dependency_graph(trace, max_ops=args.max_ops)
        if args.dot:
            with open(args.dot, "w") as f:
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
    print(Trace.load(args.trace).stats())
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
