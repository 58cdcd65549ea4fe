"""The HTML report: one offline file, inert data, and what a browser really shows."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest

import viz
from bench.browser import CHROMIUM, MISSING, run_page
from tests.traces import HOSTILE, iterations_trace, mixed_trace
from viz.style import name_colors

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=MISSING)


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _elements(page: str) -> list[tuple[str, dict]]:
    p = _Elements()
    p.feed(page)
    return p.tags


def _data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="depengine-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def test_the_report_is_one_offline_file_with_inert_data():
    trace = mixed_trace(names=HOSTILE[:3])
    page = viz.report(trace)
    tags = _elements(page)
    scripts = [a for t, a in tags if t == "script"]
    assert scripts == [{"type": "application/json", "id": "depengine-data"}, {}]  # data, then our code
    for tag, attrs in tags:  # nothing is fetched from anywhere
        assert not any(k in ("src", "href") and not v.startswith("#") for k, v in attrs.items()), (tag, attrs)
        assert tag not in ("image", "img", "iframe", "link", "object", "embed")
    assert "default-src 'none'" in page and "script-src 'sha256-" in page
    data = _data(page)
    assert set(data["names"]) >= set(HOSTILE[:3])
    assert "</script><script>" not in page.split('id="depengine-data">', 1)[1].split("</script>", 1)[0]
    assert len(data["op"]["id"]) == len(trace.ops)


def test_stats_and_gaps_tables():
    page = viz.report(mixed_trace())
    assert "<h3>Per op name</h3>" in page and "<h3>Per worker or stream</h3>" in page
    assert "achieved parallelism" in page and "<h3>Critical path</h3>" in page
    gaps = page.split('id="gaps-section"', 1)[1]
    # cpu-0 idles from 30 us to 130 us waiting for the d2h copy that brings z back from the GPU
    assert re.search(r"depengine-cpu-0</td><td>30 us</td><td>100 us</td><td>#5 store</td><td>#4 d2h", gaps)


def test_report_lanes_for_streams_and_arrows_for_cross_lane_dependencies():
    data = _data(viz.report(mixed_trace()))
    assert [lane["label"] for lane in data["lanes"]] == ["depengine-cpu-0", "depengine-cpu-1", "gpu0-d2h",
                                                         "gpu0-h2d", "gpu0-s0"]
    cross = {(s, d) for s, d, c in zip(data["edges"]["src"], data["edges"]["dst"], data["edges"]["cross"],
                                       strict=True) if c}
    # into and out of copies and GPU streams; not from one CPU worker to another
    assert cross == {(0, 2), (2, 3), (3, 4), (4, 5), (2, 5)}


def test_cli_report(tmp_path):
    trace = iterations_trace().save(tmp_path / "t.json")
    out = tmp_path / "r.html"
    r = subprocess.run([sys.executable, "-m", "depengine", "report", trace, "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and out.read_text().startswith("<!DOCTYPE html>")


HARNESS = """
var R = window.depengineReport, canvas = document.getElementById('timeline');
var ctx = canvas.getContext('2d'), dpr = window.devicePixelRatio || 1, box = canvas.getBoundingClientRect();
var pixels = [], hover = null, details = null, graphSelected = null, graphNodeOps = null;
for (var i = 0; i < R.count; i++) {
  var r = R.rectOf(i), cx = r.x + r.w / 2, cy = r.y + r.h / 2;
  var p = ctx.getImageData(Math.round(cx * dpr), Math.round(cy * dpr), 1, 1).data;
  pixels.push('#' + [p[0], p[1], p[2]].map(function (v) {
    return ('0' + v.toString(16)).slice(-2); }).join(''));
}
function at(i, type) {
  var r = R.rectOf(i);
  canvas.dispatchEvent(new MouseEvent(type, {clientX: box.left + r.x + r.w / 2,
                                             clientY: box.top + r.y + r.h / 2, bubbles: true}));
}
at(TARGET, 'mousemove');
var tip = document.getElementById('tooltip');
hover = tip.hidden ? null : tip.textContent;
at(TARGET, 'mousedown'); at(TARGET, 'mouseup');
details = document.getElementById('details').textContent;
var sel = document.querySelector('#graph g.node.selected');
graphSelected = sel ? sel.id : null;
var node = document.getElementById(GRAPH_NODE);
if (node) {
  node.querySelector('text').dispatchEvent(new MouseEvent('click', {bubbles: true}));
  graphNodeOps = R.selected();
}
return {pixels: pixels, hover: hover, details: details, graphSelected: graphSelected,
        graphNodeOps: graphNodeOps, drawn: R.drawnBars(), firstRenderMs: R.firstRenderMs()};
"""


@needs_chromium
@pytest.mark.timeout(120)  # two Chromium starts
def test_report_in_headless_chromium(tmp_path):
    trace = mixed_trace()
    page = viz.report(trace)
    target = 5  # "store" on cpu-0: waits for the d2h copy
    found = run_page(page, HARNESS.replace("TARGET", str(target)).replace("GRAPH_NODE", "'op3'"))
    assert found["errors"] == [] and found["blocked"] == [] and found["alerts"] == []
    res = found["result"]
    colors = name_colors(trace.ops)
    want = [colors[r.name].lower() if r.state != "skipped" else "#cccccc" for r in trace.ops]
    assert res["pixels"] == want  # every op drawn, in its name's colour, where the page says it is
    assert res["drawn"] >= len(trace.ops)
    hover = res["hover"]
    assert hover is not None and hover.startswith("#5 store  [done]")
    for part in ("reads z@v1, y@v1", "writes x@v2", "duration 40.0 us", "queued",
                 "waited for: #4 d2h gpu(0)->cpu(0) (z@v1 RAW)"):
        assert part in hover, (part, hover)
    details = res["details"]
    assert details.startswith("#5 store") and "depends on:" in details
    assert "#4 d2h gpu(0)->cpu(0) (z@v1 RAW)" in details
    assert res["graphSelected"] == "op5"  # selecting in the timeline highlights the graph's node
    assert res["graphNodeOps"] == [3]  # clicking the graph's node selects its op in the timeline


@needs_chromium
@pytest.mark.timeout(120)
@pytest.mark.parametrize("csp", [True, False], ids=["with-csp", "escaping-alone"])
def test_injected_names_run_no_script_in_chromium(csp):
    trace = mixed_trace(names=HOSTILE[:3])
    harness = """
      var R = window.depengineReport; R.select(0);
      return {details: document.getElementById('details').textContent, described: R.describe(0),
              images: document.querySelectorAll('image, img').length,
              scripts: document.scripts.length, body: document.body.innerText};"""
    found = run_page(viz.report(trace), harness, csp=csp)
    assert found["alerts"] == [] and found["errors"] == [] and found["blocked"] == []
    res = found["result"]
    assert res["images"] == 0
    assert res["scripts"] == 4  # prelude, data, the report's code, the harness: nothing injected
    assert res["details"].startswith("#0 " + HOSTILE[0])  # the name shows as text
    for name in HOSTILE[:3]:
        assert name[:25] in res["body"]
