"""``viz.plan_graph(plan)``: a compiled plan's DAG, drawn like viz/'s dependency graphs.

Ops are nodes (labelled with their name and position); ops bulked into one
dispatch share a cluster; edges name the var that orders them and the kind of
dependency.
"""

from __future__ import annotations

import graphviz

from .style import EDGE_STYLE, color_for, node_shape, text_color

__all__ = ["plan_graph"]


def plan_graph(plan) -> graphviz.Digraph:
    """The DAG of a :class:`depengine.plan.Plan` as a ``graphviz.Digraph``."""
    g = graphviz.Digraph("plan", graph_attr={"rankdir": "TB", "fontname": "Helvetica", "labelloc": "t",
                                             "label": repr(plan)},
                         node_attr={"fontname": "Helvetica", "fontsize": "10", "style": "filled"},
                         edge_attr={"fontname": "Helvetica", "fontsize": "8"})
    names = {s.name or "?": None for s in plan.specs}  # colours by op name, as in trace graphs
    fills = {name: color_for(k) for k, name in enumerate(names)}
    for c, members in enumerate(plan.chunks):
        target = g
        cluster = None
        if len(members) > 1:
            cluster = graphviz.Digraph(f"cluster_{c}", graph_attr={"label": f"bulk of {len(members)}",
                                                                   "style": "dashed"})
            target = cluster
        for i in members:
            s = plan.specs[i]
            fill = fills[s.name or "?"]
            target.node(f"t{i}", f"{s.name or '?'}\n#{i}", shape=node_shape(s.device), fillcolor=fill,
                        fontcolor=text_color(fill))
        if cluster is not None:
            g.subgraph(cluster)
    for src, dst, var, _, hazard in sorted(plan.edges(), key=lambda e: (e[1], e[0])):
        g.edge(f"t{src}", f"t{dst}", label=f"{var.name}\n{hazard}", style=EDGE_STYLE[hazard])
    return g
