"""``Plan.to_graphviz()``: a compiled plan's DAG, drawn like viz/'s dependency graphs.

Ops are nodes (labelled with their name and position); ops bulked into one
dispatch share a cluster; edges name the var that orders them and the kind of
dependency.
"""

from __future__ import annotations

import graphviz

from .graph_style import EDGE_STYLE, KIND_FILL, node_shape

__all__ = ["plan_graph"]


def _edges(specs):
    """(src, dst, var name, kind) for the dependencies between specs."""
    last_write, readers, out = {}, {}, []
    for i, s in enumerate(specs):
        for v in s.reads:
            if v in last_write:
                out.append((last_write[v], i, v.name, "RAW"))
        for v in s.writes:
            rs = readers.get(v, [])
            for r in rs:
                out.append((r, i, v.name, "WAR"))
            if v in last_write and not rs:
                out.append((last_write[v], i, v.name, "WAW"))
        for v in s.reads:
            readers.setdefault(v, []).append(i)
        for v in s.writes:
            last_write[v] = i
            readers[v] = []
    return out


def plan_graph(plan) -> graphviz.Digraph:
    g = graphviz.Digraph("plan", graph_attr={"rankdir": "TB", "fontname": "Helvetica", "labelloc": "t",
                                             "label": repr(plan)},
                         node_attr={"fontname": "Helvetica", "fontsize": "10", "style": "filled"},
                         edge_attr={"fontname": "Helvetica", "fontsize": "8"})
    for c, members in enumerate(plan.chunks):
        target = g
        cluster = None
        if len(members) > 1:
            cluster = graphviz.Digraph(f"cluster_{c}", graph_attr={"label": f"bulk of {len(members)}",
                                                                   "style": "dashed"})
            target = cluster
        for i in members:
            s = plan.specs[i]
            target.node(f"t{i}", f"{s.name or '?'}\n#{i}", shape=node_shape(s.device),
                        fillcolor=KIND_FILL.get(s.kind, "#eeeeee"))
        if cluster is not None:
            g.subgraph(cluster)
    for src, dst, var, kind in _edges(plan.specs):
        g.edge(f"t{src}", f"t{dst}", label=f"{var}\n{kind}", style=EDGE_STYLE[kind])
    return g
