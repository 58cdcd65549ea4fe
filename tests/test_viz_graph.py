"""The readable dependency graph: colours and legend, hidden bookkeeping, layout, grouping, escaping."""

from __future__ import annotations

import html
import itertools
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

import viz
from depengine.trace import Trace
from tests.traces import HOSTILE, US, iterations_trace, mixed_trace, op
from viz.graph import build_graph
from viz.model import RunModel
from viz.style import PALETTE, name_colors

NS = "{http://www.w3.org/2000/svg}"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="needs graphviz's dot (make test installs it)")


def _node_fills(src: str) -> dict[str, str]:
    return dict(re.findall(r'(op\d+) \[label=.*?fillcolor="(#[0-9A-Fa-f]{6})"', src))


def _legend(src: str) -> list[tuple[str, str]]:
    rows = re.findall(r'<td bgcolor="(#[0-9A-Fa-f]{6})" width="14"> </td><td align="left">(.*?) \(', src)
    return [(color, html.unescape(name)) for color, name in rows]


def test_colours_and_legend_match_the_timeline():
    trace = mixed_trace()
    src = viz.dependency_graph(trace, bookkeeping=True).source
    root = ET.fromstring(viz.timeline(trace))
    timeline_fill = {}
    for rect in root.iter(f"{NS}rect"):
        title = rect.find(f"{NS}title")
        if title is not None and title.text.startswith("#"):
            op_id = int(title.text[1:].split()[0])
            timeline_fill[op_id] = rect.get("fill")
    fills = _node_fills(src)
    assert len(fills) == len(trace.ops) == len(timeline_fill)
    for i, r in enumerate(trace.ops):
        assert fills[f"op{i}"] == timeline_fill[r.id], r.name
    # the legend lists names by total time with the timeline's colours, in the timeline's order
    legend = _legend(src)
    timeline_legend = [t.text.rsplit(" (", 1)[0] for t in root.iter(f"{NS}text")
                       if t.text and t.text.endswith("ms)")]
    assert [name for _, name in legend] == timeline_legend == list(name_colors(trace.ops))
    assert [color for color, _ in legend] == list(PALETTE[:len(legend)])
    colors = name_colors(trace.ops)
    assert all(colors[name] == color for color, name in legend)


def test_bookkeeping_ops_are_absent_unless_asked_for():
    trace = iterations_trace()
    src = viz.dependency_graph(trace).source
    assert "delete" not in src  # neither a node, nor the legend, nor an edge
    assert "1 bookkeeping ops hidden" in src
    shown = viz.dependency_graph(trace, bookkeeping=True).source
    assert 'label="delete wa' in shown and "hidden" not in shown


def test_containers_of_bulks_are_bookkeeping_and_edges_go_through_hidden_ops():
    ops = [op(0, "bulk(2)", "w0", 0, 30 * US, [], [(0, "a", 1), (0, "a", 2)]),
           op(1, "inc", "w0", 5 * US, 10 * US, [], [(0, "a", 1)]),
           op(2, "inc", "w0", 12 * US, 20 * US, [], [(0, "a", 2)]),
           op(3, "use", "w1", 40 * US, 50 * US, [(0, "a", 2)], [])]
    picture = build_graph(RunModel(Trace(ops)))
    assert picture.hidden == [True, False, False, False]
    src = picture.dot.source
    assert "bulk(2)" not in src and "op2 -> op3" in src


def test_edge_kinds_by_line_style_and_labels_only_on_request():
    trace = iterations_trace()
    src = viz.dependency_graph(trace).source
    edges = re.findall(r"(op\d+) -> (op\d+) \[(.*?)\]", src)
    assert edges and not any("label=" in attrs for _, _, attrs in edges)
    styles = {re.search(r"style=(\w+)", attrs).group(1) for _, _, attrs in edges}
    assert styles == {"solid", "dashed", "dotted"}  # RAW, WAR, WAW
    assert re.search(r"op1 -> op3 \[[^]]*style=dashed", src)  # work reads s, the next step writes it
    labelled = viz.dependency_graph(trace, edge_labels=True).source
    assert re.search(r'op0 -> op1 \[[^]]*label="s v1 RAW"', labelled)


def test_left_to_right_with_a_straight_critical_path_and_its_time_in_the_title():
    trace = iterations_trace()
    model = RunModel(trace)
    src = viz.dependency_graph(trace).source
    assert "rankdir=LR" in src
    critical = [f"op{i}" for i in model.critical]
    assert len(critical) >= 3
    for node in critical:
        assert re.search(rf"\b{node} \[[^]]*group=critical", src)
    for a, b in itertools.pairwise(critical):
        assert re.search(rf"{a} -> {b} \[[^]]*penwidth=3[^]]*weight=20", src)
    cp = trace.critical_path_ns()
    assert f"critical path {viz.graph.fmt_ns(cp)} of" in src
    assert cp == 51 * US  # step, work b (7 us) per iteration, except the last: 10+7+10+7+10+7


def test_iterations_are_detected_and_groups_count_and_time_ops():
    trace = iterations_trace(steps=4)
    picture = build_graph(RunModel(trace), group="groups")
    assert picture.iterations.anchor == "step"
    assert picture.iterations.of[:6] == [1, 1, 1, 2, 2, 2]
    got = [(g.name, g.first, g.last, g.count, g.total_ns) for g in picture.groups]
    want = []
    for k in range(1, 5):
        want += [("step", k, k, 1, 10 * US), ("work", k, k, 2, 12 * US)]
    assert got == want
    src = picture.dot.source
    assert src.count("work\\n\u00d72 \u00b7 12 us\\nk=") == 4
    assert "step\\n\u00d71 \u00b7 10 us\\nk=3" in src
    assert "summarised into 8 nodes by name and iteration (k: steps of step)" in src


def test_iterations_merge_into_ranges_when_a_page_would_overflow():
    trace = iterations_trace(steps=40)  # 120 visible ops: 80 groups by iteration
    picture = build_graph(RunModel(trace), max_ops=30)
    groups = picture.groups
    assert len(groups) <= 30
    assert sum(g.count for g in groups) == 120
    by_name = {}
    for g in groups:
        by_name.setdefault(g.name, []).append(g)
    assert sum(g.total_ns for g in by_name["work"]) == 40 * 12 * US
    spans = sorted((g.first, g.last) for g in by_name["step"])
    assert spans[0][0] <= 1 and spans[-1][1] == 40 and all(b - a == 4 or b == 40 for a, b in spans)
    assert re.search("k=\\d+\\.\\.\\d+", picture.dot.source)


def test_without_iterations_groups_by_name_and_keeps_the_page_small():
    ops = [op(i, f"name{i % 7}", "w0", i * US, i * US + 500, [], [(i, f"v{i}", 1)]) for i in range(70)]
    picture = build_graph(RunModel(Trace(ops)), max_ops=5)
    assert picture.iterations.anchor is None
    names = [g.name for g in picture.groups]
    assert len(names) == 5 and names.count("other (3 names)") == 1
    assert sum(g.count for g in picture.groups) == 70


def test_hostile_names_are_escaped_in_dot_and_svg(tmp_path):
    names = (*HOSTILE, "ctl\x01char", "<b>bold</b>")
    ops = [op(i, n, "w0", i * 10 * US, i * 10 * US + 5 * US, [(0, n, i)], [(0, n, i + 1)])
           for i, n in enumerate(names)]
    trace = Trace(ops)
    src = viz.dependency_graph(trace, edge_labels=True).source
    assert "\x01" not in src
    legend = src[src.index("label=<<table"):src.index("</table>>")]
    for n in HOSTILE[:3]:
        assert html.escape(n[:20]) in legend and n[:10] not in legend  # HTML-like label: escaped
        assert 'label="' + n.replace('"', '\\"') + "\\n#" in src  # DOT label: a quoted string
    timeline = viz.timeline(trace)
    root = ET.fromstring(timeline)
    assert not [e for e in root.iter() if e.tag in (f"{NS}image", f"{NS}script", "image", "script")]
    titles = " ".join(t.text for t in root.iter(f"{NS}title"))
    for n in HOSTILE:
        assert n in titles
    if shutil.which("dot"):
        svg = ET.parse(viz.render(viz.dependency_graph(trace), tmp_path / "g.svg")).getroot()
        assert not [e for e in svg.iter() if e.tag in (f"{NS}image", f"{NS}script")]
        texts = "".join(t.text or "" for t in svg.iter(f"{NS}text"))
        for n in HOSTILE[:3]:
            assert n[:20] in texts
        assert "a\\b \\N \\G" in texts  # backslashes shown, not taken as DOT escapes


@needs_dot
def test_summarised_graph_renders_with_dot(tmp_path):
    svg = ET.parse(viz.render(viz.dependency_graph(iterations_trace(steps=40), max_ops=30),
                              tmp_path / "g.svg")).getroot()
    ids = {g.get("id") for g in svg.iter(f"{NS}g")}
    assert {"grp0", "legend"} <= ids
