"""viz/: DOT text, rendering with the real dot, timelines, the CLI."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import depengine as de
import viz
from depengine.trace import OpRecord, Trace
from tests.test_profiler import diamond


@pytest.fixture(scope="module")
def diamond_trace():
    with de.profile() as prof, de.Engine("threaded", workers=2) as eng:
        diamond(eng)
    return prof.trace()


def test_dependency_graph_dot_text(diamond_trace):
    g = viz.dependency_graph(diamond_trace)
    src = g.source
    for name in ("fill_a", "b=a+1", "c=a+2", "a=b*c"):
        assert f'label="{name}\\n#' in src
    assert "rankdir=LR" in src
    assert src.count("->") == 4  # parallel edges (a WAR and b RAW into a=b*c) are drawn once
    assert "op0 -> op1 [" in src and "op0 -> op2 [" in src
    assert "label=" not in src.split("->", 1)[1].split("legend")[0].split("]")[0]  # edge labels off
    path = diamond_trace.critical_path()
    assert path[0] == (0, 0) and path[-1] == (0, 3) and len(path) == 3
    mid = path[1][1]
    assert f'op0 -> op{mid} [color="#c0392b" penwidth=3' in src  # the critical edge, kept straight
    assert src.count("group=critical") == 3
    assert "critical path" in src.split("label=")[-1]
    labelled = viz.dependency_graph(diamond_trace, edge_labels=True).source
    assert 'label="a v1 RAW"' in labelled and "b v1" in labelled and "a v2" in labelled


def test_dependency_graph_shows_failures_and_devices():
    ops = [
        OpRecord(0, "bad", 0, "cpu(0)", "normal", 0, "w0", [], [(0, "v", 1)], 0, 0, 0, 5, "failed", "E: x"),
        OpRecord(1, "gpu-op", 0, "gpu(0)", "async", 0, "s0", [(0, "v", 1)], [], 0, 5, 5, 6, "skipped"),
    ]
    src = viz.dependency_graph(Trace(ops), critical_path=False).source
    assert "color=red" in src and "shape=hexagon" in src and "dashed" in src


def test_large_graphs_are_summarised():
    with de.profile() as prof, de.Engine("threaded", workers=2) as eng:
        vs = [eng.new_var(f"c{i}") for i in range(8)]
        for _ in range(60):
            for i in range(8):
                eng.push(lambda ctx: None, reads=[vs[i - 1]], writes=[vs[i]], name=f"col{i % 2}")
        eng.wait_all()
    src = viz.dependency_graph(prof, max_ops=100).source
    counts = [int(n) for n in re.findall(r'grp\d+ \[label="col[01]\\n\u00d7(\d+)', src)]
    assert 2 <= len(counts) <= 100 and sum(counts) == 480  # every op in exactly one node
    assert "op0 " not in src
    full = viz.dependency_graph(prof, max_ops=10_000).source
    assert full.count("->") > 400


def test_bad_max_ops(diamond_trace):
    with pytest.raises(ValueError, match="max_ops=0"):
        viz.dependency_graph(diamond_trace, max_ops=0)
    with pytest.raises(TypeError, match="must be a Trace"):
        viz.dependency_graph(42)


def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs graphviz's dot (make test installs it)")
def test_render_with_dot_to_svg_and_png(diamond_trace, tmp_path):
    g = viz.dependency_graph(diamond_trace)
    svg = viz.render(g, tmp_path / "dag.svg")
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert "a=b*c" in Path(svg).read_text()
    png = viz.render(g, tmp_path / "dag.png")
    width, height = _png_size(png)
    assert width > 100 and height > 200  # four ops stacked in three ranks


def test_render_errors(diamond_trace, tmp_path, monkeypatch):
    g = viz.dependency_graph(diamond_trace)
    with pytest.raises(ValueError, match="unknown image format 'gif'"):
        viz.render(g, tmp_path / "x.gif")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(viz.GraphvizMissingError, match="apt-get install graphviz"):
        viz.render(g, tmp_path / "x.svg")
    # the engine itself does not care
    with de.Engine("naive") as eng:
        eng.push(lambda ctx: None)


def test_timeline_svg(diamond_trace, tmp_path):
    out = tmp_path / "tl.svg"
    text = viz.timeline(diamond_trace, out)
    assert Path(out).read_text() == text
    root = ET.fromstring(text)
    ns = "{http://www.w3.org/2000/svg}"
    titles = [t.text for t in root.iter(f"{ns}title")]
    op_titles = [t for t in titles if t.startswith("#")]
    assert len(op_titles) == 4
    assert any("a=b*c" in t and "reads b@v1, c@v1" in t for t in op_titles)
    lane_labels = [t.text for t in root.iter(f"{ns}text") if t.text and t.text.startswith("cpu(0)")]
    lanes = {r.lane for r in diamond_trace.ops}
    assert len(lane_labels) == len(lanes)
    assert any(t.text == "critical path" for t in root.iter(f"{ns}text"))
    critical = [r for r in root.iter(f"{ns}rect") if r.get("stroke") == "#c0392b"]
    assert len(critical) == 3
    assert any(t.startswith("wait_for_var('a')") for t in titles)


def test_stats_function_accepts_paths(diamond_trace, tmp_path):
    path = diamond_trace.save(tmp_path / "t.json")
    s = viz.stats(path)
    assert s.per_name.keys() == {"fill_a", "b=a+1", "c=a+2", "a=b*c"}
    assert 0 < s.parallelism <= 2.5


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "depengine", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs graphviz's dot")
def test_cli_trace_viz_stats(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(
        "import depengine as de\n"
        "with de.Engine('threaded', workers=2) as eng:\n"
        "    a, b = eng.new_var('a'), eng.new_var('b')\n"
        "    for i in range(5):\n"
        "        eng.push(lambda ctx: None, writes=[a], name='produce')\n"
        "        eng.push(lambda ctx: None, reads=[a], writes=[b], name='consume')\n"
    )
    trace = tmp_path / "trace.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = _cli("trace", "-o", str(trace), "--", sys.executable, str(script), cwd=root)
    assert r.returncode == 0, r.stderr
    assert "10 ops" in r.stdout
    r = _cli("viz", str(trace), "--graph", str(tmp_path / "g.svg"), "--timeline", str(tmp_path / "t.svg"),
             "--dot", str(tmp_path / "g.dot"), cwd=root)
    assert r.returncode == 0, r.stderr
    assert "produce" in (tmp_path / "g.dot").read_text()
    ET.parse(tmp_path / "g.svg")
    ET.parse(tmp_path / "t.svg")
    r = _cli("stats", str(trace), cwd=root)
    assert r.returncode == 0 and "produce" in r.stdout and "utilisation" in r.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    r = _cli("stats", str(bad), cwd=root)
    assert r.returncode == 2 and "bad.json" in r.stderr and "not valid JSON" in r.stderr
