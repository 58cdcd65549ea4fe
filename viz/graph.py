"""Dependency graphs of a trace as ``graphviz.Digraph``, made to read at a glance.

- Nodes are filled with their op name's colour, the same palette as the
  timeline, and a legend lists the names by total time.  The shape says the
  device (box: CPU, hexagon: GPU); failed ops have a red border, skipped
  ones are grey and dashed.
- Bookkeeping ops (``delete x``, containers of bulks and plans whose members
  are recorded) are hidden unless ``bookkeeping=True``; dependencies through
  them are kept as edges between what they joined.
- Edges carry no label unless ``edge_labels=True``; their line says the
  kind: read-after-write solid, write-after-read dashed, write-after-write
  dotted.  Parallel edges between two nodes are drawn once.
- The flow goes left to right, one column per topological level; the
  critical path is drawn thick and red and kept straight, and the title
  gives its time against the wall time.
- Past ``max_ops`` visible ops the graph is summarised (see ``summary``):
  ops with the same name and iteration become one node showing how many
  they are and their total time.
"""

from __future__ import annotations

import html
import itertools
import math
from dataclasses import dataclass

import graphviz
import numpy as np

from .model import EDGE_KINDS, RunModel
from .style import CRITICAL, EDGE_STYLE, clean_text, node_shape, short, text_color
from .summary import Group, Iterations, bookkeeping, find_iterations, group_ops

__all__ = ["GraphPicture", "build_graph", "dependency_graph", "fmt_ns"]

GROUP_MODES = ("auto", "ops", "groups")
# which kind styles a merged edge: RAW over WAW over WAR (kind index -> rank, and back)
KIND_RANK = np.array([2, 0, 1])
RANK_KIND = (1, 2, 0)


@dataclass
class GraphPicture:
    """A graph and how its nodes map to ops: op i is drawn in node ``nodes[node[i]]`` (-1: hidden)."""

    dot: graphviz.Digraph
    nodes: list[str]
    node: np.ndarray
    groups: list[Group] | None
    hidden: list[bool]
    iterations: Iterations

    @property
    def node_of(self) -> list[str | None]:
        """Op i's node id (None: hidden)."""
        return [None if k < 0 else self.nodes[k] for k in self.node.tolist()]


def dependency_graph(trace, *, max_ops: int = 200, bookkeeping: bool = False, edge_labels: bool = False,
                     critical_path: bool = True, group: str = "auto", legend: bool = True,
                     title: str | None = None) -> graphviz.Digraph:
    """The dependency graph of ``trace`` (a Trace, a Profile or a saved trace's path).

    ``group``: ``"auto"`` summarises past ``max_ops`` visible ops, ``"ops"``
    never does, ``"groups"`` always does.
    """
    return build_graph(RunModel(trace), max_ops=max_ops, bookkeeping=bookkeeping, edge_labels=edge_labels,
                       critical_path=critical_path, group=group, legend=legend, title=title).dot


def build_graph(model: RunModel, *, max_ops: int = 200, bookkeeping: bool = False, edge_labels: bool = False,
                critical_path: bool = True, group: str = "auto", legend: bool = True,
                title: str | None = None) -> GraphPicture:
    """The graph of :func:`dependency_graph`, with the op-to-node map the HTML report needs."""
    if max_ops.__class__ is not int or max_ops < 1:
        raise ValueError(f"max_ops={max_ops!r} must be an int >= 1")
    if group not in GROUP_MODES:
        raise ValueError(f"group={group!r} must be one of {', '.join(GROUP_MODES)}")
    hidden = [False] * len(model) if bookkeeping else _bookkeeping(model)
    visible = ~np.asarray(hidden, dtype=bool)
    order = model.topo_order()
    iterations = find_iterations(model, visible, order)
    n_visible = int(visible.sum())
    grouped = group == "groups" or (group == "auto" and n_visible > max_ops)
    on_path = model.on_path if critical_path else set()
    g = graphviz.Digraph("depengine", graph_attr={
        "rankdir": "LR", "fontname": "Helvetica", "labelloc": "t", "fontsize": "14", "nodesep": "0.15",
        "ranksep": "0.35", "newrank": "true", "outputorder": "edgesfirst"},
        node_attr={"fontname": "Helvetica", "fontsize": "10", "style": "filled", "margin": "0.06,0.03"},
        edge_attr={"fontname": "Helvetica", "fontsize": "8", "arrowsize": "0.6", "color": "#555555"})
    colors = model.colors
    node = np.full(len(model), -1, dtype=np.int64)
    groups = None
    if grouped:
        groups = group_ops(model, visible, iterations, max_ops)
        for k, grp in enumerate(groups):
            node[grp.members] = k
        nodes = [f"grp{k}" for k in range(len(groups))]
        _group_nodes(g, model, groups, colors, on_path)
    else:
        shown = np.flatnonzero(visible)
        node[shown] = np.arange(len(shown))
        nodes = [f"op{i}" for i in shown.tolist()]
        for i in order[node[order] >= 0].tolist():
            _op_node(g, model, i, colors, i in on_path)
    _edges(g, model, nodes, node, hidden, order, on_path, edge_labels, critical_path)
    if legend:
        _legend(g, model, colors, visible)
    g.attr(label=graphviz.nohtml(_dot_text(title) if title else _title(model, hidden, groups, iterations,
                                                                          critical_path)))
    return GraphPicture(g, nodes, node, groups, hidden, iterations)


def _bookkeeping(model: RunModel) -> list[bool]:
    flags = bookkeeping(model)
    if all(flags):  # a run of nothing but bookkeeping still shows something
        return [False] * len(flags)
    return flags


def fmt_ns(ns: float) -> str:
    """A duration for people: 812 ns, 45.2 us, 3.07 ms, 1.25 s."""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if abs(ns) >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.0f} ns"


def _dot_text(s: str) -> str:
    """User text for a DOT label: no control characters, backslashes shown as themselves."""
    return clean_text(s).replace("\\", "\\\\").replace("\n", "\\n")


def _label(*lines: str) -> str:
    return graphviz.nohtml("\\n".join(_dot_text(x) for x in lines if x))


def _op_node(g, model: RunModel, i: int, colors: dict, critical: bool) -> None:
    r = model.op(i)
    fill = colors[r.name]
    attrs = {"id": f"op{i}", "shape": node_shape(r.device), "fillcolor": fill, "fontcolor": text_color(fill),
             "tooltip": _label(f"#{r.id} {short(r.name, 80)} [{r.state}]",
                               f"{r.device} {r.lane}, {fmt_ns(r.duration)}")}
    if r.state == "failed":
        attrs.update(color="red", penwidth="2")
    elif r.state == "skipped":
        attrs.update(fillcolor="#e0e0e0", fontcolor="#777777", style="filled,dashed")
    if critical:
        attrs.update(color=CRITICAL, penwidth="3", group="critical")
    state = "" if r.state == "done" else r.state
    g.node(f"op{i}", _label(short(r.name, 40), f"#{r.id}", state), **attrs)


def _group_nodes(g, model: RunModel, groups: list[Group], colors: dict, on_path: set) -> None:
    t = model.table
    failed_op, skipped_op = t.is_state("failed"), t.is_state("skipped")
    for k, grp in enumerate(groups):
        members = np.asarray(grp.members, dtype=np.int64)
        fill = colors.get(grp.name, "#dddddd")
        devices = {t.devices[d] for d in np.unique(t.device[members]).tolist()}
        failed = int(failed_op[members].sum())
        skipped = int(skipped_op[members].sum())
        extra = ", ".join(f"{n} {s}" for n, s in ((failed, "failed"), (skipped, "skipped")) if n)
        attrs = {"id": f"grp{k}", "shape": node_shape(devices.pop() if len(devices) == 1 else "cpu"),
                 "fillcolor": fill, "fontcolor": text_color(fill),
                 "tooltip": _label(f"{short(grp.name, 80)} {grp.span()}",
                                   f"{grp.count} op{'s' * (grp.count != 1)}, total {fmt_ns(grp.total_ns)}")}
        if failed:
            attrs.update(color="red", penwidth="2")
        if not on_path.isdisjoint(grp.members):
            attrs.update(color=CRITICAL, penwidth="3", group="critical")
        g.node(f"grp{k}", _label(short(grp.name, 40), f"\u00d7{grp.count} \u00b7 {fmt_ns(grp.total_ns)}",
                                 grp.span(), extra), **attrs)


def _edges(g, model: RunModel, names: list[str], node: np.ndarray, hidden, order, on_path, edge_labels: bool,
           critical: bool) -> None:
    """One edge per pair of nodes; edges through hidden ops join what the hidden op joined."""
    a, b, edge, sub = _node_pairs(model, node, np.asarray(hidden, dtype=bool), order)
    position = np.empty(len(node), dtype=np.int64)
    position[order] = np.arange(len(node))
    walk = np.lexsort((sub, edge, position[model.dst[edge]]))  # the order of a walk over ops and their preds
    a, b, edge = a[walk], b[walk], edge[walk]
    pair = a * max(1, len(names)) + b
    _, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    rank = np.zeros(len(first), dtype=np.int64)
    np.maximum.at(rank, inverse, KIND_RANK[model.kind[edge]])
    count = np.bincount(inverse, minlength=len(first))
    labels: list[set] = [set() for _ in first]
    if edge_labels:
        for k, e in zip(inverse.tolist(), edge.tolist(), strict=True):
            if len(labels[k]) < 4:
                labels[k].add(f"{short(model.table.var_names[model.var[e]], 20)} v{model.version[e]}")
    path_pairs = set()
    if critical:
        path_nodes = [names[k] for k in node[model.critical].tolist() if k >= 0]
        path_pairs = {(x, y) for x, y in itertools.pairwise(path_nodes) if x != y}
    for k in np.argsort(first, kind="stable").tolist():
        x, y = names[a[first[k]]], names[b[first[k]]]
        kind, n = RANK_KIND[rank[k]], int(count[k])
        attrs = {"style": EDGE_STYLE[EDGE_KINDS[kind]]}
        if n > 1 and x.startswith("grp"):
            attrs["penwidth"] = f"{1 + math.log2(n) / 3:.2f}"
        if edge_labels:
            text = ", ".join(sorted(labels[k])) + (f" (\u00d7{n})" if n > len(labels[k]) else "")
            attrs["label"] = _label(text + f" {EDGE_KINDS[kind]}")
        if (x, y) in path_pairs:
            attrs.update(color=CRITICAL, penwidth="3", weight="20")
        g.edge(x, y, **attrs)


def _node_pairs(model: RunModel, node: np.ndarray, hidden: np.ndarray, order) -> tuple[np.ndarray, ...]:
    """``(source node, destination node, edge, k)`` for every dependency between two different shown
    nodes: an edge from a shown op, or the k-th shown op a hidden source depended on (through
    hidden ops, at most 16 per hidden op)."""
    src, dst = model.src, model.dst
    direct = np.flatnonzero(~hidden[src] & ~hidden[dst])
    parts = [(node[src[direct]], node[dst[direct]], direct, np.zeros(len(direct), dtype=np.int64))]
    if hidden.any():
        through: dict[int, set[int]] = {}  # hidden op -> shown ops it depends on (through hidden ones)
        for d in order[hidden[order]].tolist():
            mine = through.setdefault(d, set())
            for e in model.preds(d):
                s = int(src[e])
                mine.update(list(through.get(s, ()))[:16] if hidden[s] else (s,))
        into_shown = np.flatnonzero(hidden[src] & ~hidden[dst]).tolist()
        rows = [(node[s], node[int(dst[e])], e, k) for e in into_shown
                for k, s in enumerate(through.get(int(src[e]), ()))]
        if rows:
            parts.append(tuple(np.array(c, dtype=np.int64) for c in zip(*rows, strict=True)))
    a, b, edge, sub = (np.concatenate([p[c] for p in parts]) for c in range(4))
    keep = (a >= 0) & (b >= 0) & (a != b)
    return a[keep], b[keep], edge[keep], sub[keep]


def _legend(g, model: RunModel, colors: dict, visible: list[bool], max_names: int = 20) -> None:
    t = model.table
    shown = np.flatnonzero(visible)
    sums = np.bincount(t.name[shown], weights=t.duration[shown], minlength=len(t.names)).tolist()
    present = np.bincount(t.name[shown], minlength=len(t.names)).tolist()
    totals = {name: sums[k] for k, name in enumerate(t.names) if present[k]}
    names = [n for n in colors if n in totals]
    rows = ['<tr><td colspan="2" align="left"><b>op names (by total time)</b></td></tr>']
    for name in names[:max_names]:
        rows.append(f'<tr><td bgcolor="{colors[name]}" width="14"> </td><td align="left">'
                    f"{html.escape(short(name, 30))} ({fmt_ns(totals[name])})</td></tr>")
    if len(names) > max_names:
        rows.append(f'<tr><td></td><td align="left">... {len(names) - max_names} more</td></tr>')
    for kind, words in (("RAW", "read after write"), ("WAR", "write after read"),
                        ("WAW", "write after write")):
        rows.append(f'<tr><td colspan="2" align="left">{EDGE_STYLE[kind]} line: {words}</td></tr>')
    rows.append(f'<tr><td colspan="2" align="left"><font color="{CRITICAL}">thick red: critical path'
                "</font></td></tr>")
    g.node("legend", "<<table border=\"0\" cellborder=\"0\" cellspacing=\"1\">" + "".join(rows) + "</table>>",
           shape="plaintext", style="", id="legend", fontsize="9")


def _title(model: RunModel, hidden, groups, iterations: Iterations, critical: bool) -> str:
    n_hidden = sum(hidden)
    lines = [f"{len(model) - n_hidden} ops" + (f" ({n_hidden} bookkeeping ops hidden)" * bool(n_hidden))]
    if groups is not None:
        how = (f"name and iteration (k: steps of {short(iterations.anchor, 30)})"
               if iterations.anchor is not None and groups and groups[0].first is not None else "name")
        lines[0] += f", summarised into {len(groups)} nodes by {how}"
    wall = model.table.wall_ns()
    if critical and wall:
        cp = model.stats.critical_path_ns
        lines.append(f"critical path {fmt_ns(cp)} of {fmt_ns(wall)} wall ({cp / wall:.0%}) "
                     f"through {len(model.critical)} ops")
    return "\\n".join(_dot_text(x) for x in lines)
