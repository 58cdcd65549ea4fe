"""Dependency graphs of a trace as ``graphviz.Digraph``.

Ops are nodes: the shape says the device (box: CPU, hexagon: GPU), the fill
says the kind (normal, prioritized, copy, async); failed ops have a red
border, skipped ones are grey and dashed.  Edges carry the var and version
that make the dependency and its kind: read-after-write (solid),
write-after-read (dashed), write-after-write (dotted).  The critical path is
drawn thick and red.  Past ``max_ops`` ops, ops with the same name collapse
into one counted node and parallel edges into one counted edge, so large
runs stay readable.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

import graphviz

from depengine.trace import Trace

from .style import CRITICAL, EDGE_STYLE, KIND_FILL, node_shape

__all__ = ["dependency_graph"]


def dependency_graph(trace, *, max_ops: int = 300, critical_path: bool = True,
                     title: str | None = None) -> graphviz.Digraph:
    """The dependency graph of ``trace`` (a Trace, a Profile or a saved trace's path)."""
    trace = Trace.coerce(trace)
    if max_ops.__class__ is not int or max_ops < 1:
        raise ValueError(f"max_ops={max_ops!r} must be an int >= 1")
    g = graphviz.Digraph("depengine", graph_attr={"rankdir": "TB", "fontname": "Helvetica",
                                                  "label": title or "", "labelloc": "t"},
                         node_attr={"fontname": "Helvetica", "fontsize": "10", "style": "filled"},
                         edge_attr={"fontname": "Helvetica", "fontsize": "8"})
    path = trace.critical_path() if critical_path else []
    if len(trace.ops) <= max_ops:
        _full(g, trace, path)
    else:
        _collapsed(g, trace, path)
    return g


def _node_attrs(kind: str, device: str, state: str, critical: bool) -> dict:
    attrs = {"shape": node_shape(device), "fillcolor": KIND_FILL.get(kind, "#eeeeee")}
    if state == "failed":
        attrs.update(color="red", penwidth="2")
    elif state == "skipped":
        attrs.update(fillcolor="#e0e0e0", style="filled,dashed", fontcolor="#777777")
    if critical:
        attrs.update(color=CRITICAL, penwidth="3")
    return attrs


def _full(g, trace: Trace, path) -> None:
    on_path = set(path)
    path_edges = set(itertools.pairwise(path))
    for r in trace.ops:
        label = f"{r.name}\n#{r.id} {r.device}"
        if r.state != "done":
            label += f"\n{r.state}"
        g.node(_nid(r.key), label, **_node_attrs(r.kind, r.device, r.state, r.key in on_path))
    for e in trace.edges():
        attrs = {"label": f"{e.var} v{e.version}\n{e.hazard}", "style": EDGE_STYLE[e.hazard]}
        if (e.src, e.dst) in path_edges:
            attrs.update(color=CRITICAL, penwidth="3", fontcolor=CRITICAL)
        g.edge(_nid(e.src), _nid(e.dst), **attrs)


def _collapsed(g, trace: Trace, path) -> None:
    group_of = {r.key: (r.name, r.device) for r in trace.ops}
    members: dict[tuple[str, str], list] = defaultdict(list)
    for r in trace.ops:
        members[group_of[r.key]].append(r)
    path_groups = [group_of[k] for k in path]
    on_path = set(path_groups)
    path_edges = set(itertools.pairwise(path_groups))
    ids = {grp: f"g{n}" for n, grp in enumerate(members)}
    for grp, rs in members.items():
        name, device = grp
        states = Counter(r.state for r in rs)
        label = f"{name}\nx{len(rs)} {device}"
        extra = ", ".join(f"{n} {s}" for s, n in states.items() if s != "done")
        if extra:
            label += f"\n{extra}"
        state = "failed" if states.get("failed") else "done"
        kind = Counter(r.kind for r in rs).most_common(1)[0][0]
        g.node(ids[grp], label, **_node_attrs(kind, device, state, grp in on_path))
    agg: dict[tuple, Counter] = defaultdict(Counter)
    var_names: dict[tuple, set] = defaultdict(set)
    for e in trace.edges():
        key = (group_of[e.src], group_of[e.dst])
        agg[key][e.hazard] += 1
        var_names[key].add(e.var)
    for (src, dst), kinds in agg.items():
        names = sorted(var_names[(src, dst)])
        shown = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
        label = " ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) + f"\n{shown}"
        attrs = {"label": label, "style": EDGE_STYLE[kinds.most_common(1)[0][0]]}
        if (src, dst) in path_edges:
            attrs.update(color=CRITICAL, penwidth="3", fontcolor=CRITICAL)
        g.edge(ids[src], ids[dst], **attrs)


def _nid(key: tuple[int, int]) -> str:
    return f"op{key[0]}_{key[1]}"
