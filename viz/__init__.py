"""Pictures and figures of what an engine did: dependency graphs, timelines, statistics, HTML reports.

Every function takes a finished profile, a :class:`depengine.Trace`, or the
path of a saved trace file.
"""

from depengine.trace import Stats, Trace, TraceError

from .graph import dependency_graph
from .html_report import report
from .plan_graph import plan_graph
from .render import DOT_MISSING, GraphvizMissingError, render
from .timeline import timeline

__all__ = [
    "DOT_MISSING",
    "GraphvizMissingError",
    "Stats",
    "Trace",
    "TraceError",
    "dependency_graph",
    "plan_graph",
    "render",
    "report",
    "stats",
    "timeline",
]


def stats(trace) -> Stats:
    """Per-op-name timings, per-lane utilisation, queueing delay, parallelism, critical path."""
    return Trace.coerce(trace).stats()
