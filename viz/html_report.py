"""One self-contained HTML file that explains a run: ``viz.report(trace, "report.html")``.

The page needs no network: its script, style and data are inline.  It
holds

- an interactive timeline on a canvas (wheel zooms, drag pans, hovering an
  op shows its name, id, vars read and written with versions, start,
  duration, queueing delay and what it waited for; clicking selects it and
  draws its dependencies as arrows);
- the readable dependency graph (``viz.graph``) as inline SVG; clicking a
  node selects its ops in the timeline and selecting an op highlights its
  node;
- the statistics (per op name, per worker or stream, queueing, parallelism,
  critical path) and the idle gaps of every lane with the op each waited for.

Large traces stay responsive because the timeline is a canvas redrawn from
columnar arrays: each frame finds the visible ops of a lane by binary
search and merges ops narrower than a pixel into one bar, so a frame costs
the pixels on screen, not the ops in the trace; the graph is summarised
past ``max_ops`` ops.  User text (op, var and lane names) reaches the page
only as escaped HTML or as JSON inside a ``<script type="application/json">``
element that the browser never runs, with ``<``, ``>`` and ``&`` escaped, and
the script shows it with ``textContent`` only.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import shutil
from importlib.resources import files
from string import Template

import msgspec
import numpy as np

from depengine.trace import Trace, TraceError, atomic_write

from .graph import build_graph, fmt_ns
from .model import RunModel
from .render import DOT_MISSING
from .style import clean_text, short

__all__ = ["report"]

STATE_CODES = {"done": 0, "failed": 1, "skipped": 2}
MAX_TABLE_ROWS = 60
GAPS_PER_LANE = 8


def report(trace, path=None, *, max_ops: int = 120, title: str | None = None) -> str:
    """The HTML report of ``trace`` (a Trace, a Profile or a trace file); written to ``path`` when given.

    Raises :class:`TraceError` for a trace with no ops; the file at ``path``
    appears complete or not at all.
    """
    trace = Trace.coerce(trace)
    if not len(trace):
        raise TraceError(f"{trace.source}: the trace has no ops: nothing to report")
    model = RunModel(trace)
    picture = build_graph(model, max_ops=max_ops)
    page = _page(model, picture, title or f"depengine report: {trace.source}")
    if path is not None:
        with atomic_write(path) as f:
            f.write(page)
    return page


def _graph_svg(picture) -> str:
    if shutil.which("dot") is None:
        return f'<p class="note">The dependency graph needs graphviz: {html.escape(DOT_MISSING)}.</p>'
    svg = picture.dot.pipe(format="svg", encoding="utf-8")
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML
    # drop the fixed size so that CSS fits the graph to the page (the viewBox keeps its shape)
    return re.sub(r'^<svg width="[^"]*" height="[^"]*"', "<svg", svg, count=1)


def _data(model: RunModel, picture) -> dict:
    """The page's data as columns (lists), one entry per op, access or edge."""
    t = model.table
    colors = model.colors
    names = list(colors)
    name_ix = np.array([names.index(n) for n in t.names], dtype=np.int64)
    kinds = sorted(t.kinds)
    kind_ix = np.array([kinds.index(k) for k in t.kinds], dtype=np.int64)
    state_ix = np.array([STATE_CODES[s] for s in t.states], dtype=np.int64)
    return {
        "names": [clean_text(n) for n in names], "colors": list(colors.values()),
        "vars": [clean_text(v) for v in t.var_names], "kinds": [clean_text(k) for k in kinds],
        "lanes": [{"label": clean_text(x.label), "device": clean_text(x.device)} for x in model.lanes],
        "wall": int(model.end.max()), "engines": len(np.unique(t.engine)),
        "op": {"id": t.id.tolist(), "name": name_ix[t.name].tolist(), "lane": model.lane_of.tolist(),
               "start": t.start.tolist(), "end": model.end.tolist(), "ready": t.ready.tolist(),
               "push": t.push.tolist(), "state": state_ix[t.state].tolist(), "kind": kind_ix[t.kind].tolist(),
               "engine": t.engine.tolist(),
               "node": picture.node.tolist(),
               "error": {i: clean_text(e) for i, e in t.errors.items() if e}},
        "rw": {"off": t.acc_off.tolist(), "var": t.acc_name.tolist(), "ver": t.acc_ver.tolist(),
               "w": t.acc_write.astype(np.int8).tolist()},
        "edges": {"src": model.src.tolist(), "dst": model.dst.tolist(), "kind": model.kind.tolist(),
                  "var": model.var.tolist(), "ver": model.version.tolist(),
                  "cross": model.cross.astype(np.int8).tolist()},
        "waited": model.waited_for.tolist(), "critical": model.critical, "nodes": picture.nodes,
        "waits": [{"thread": clean_text(w.thread), "what": clean_text(w.what), "start": w.start, "end": w.end,
                   "outcome": clean_text(w.outcome)} for w in model.trace.waits],
    }


def _json_for_html(data: dict) -> str:
    """JSON that cannot end its script element or open markup: <, >, & and line separators escaped."""
    text = msgspec.json.encode(data).decode("utf-8")
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _table(head: list[str], rows: list[list[str]], attrs: list[str] | None = None) -> str:
    """An HTML table of already-escaped cells."""
    out = ["<table><thead><tr>", *(f"<th>{h}</th>" for h in head), "</tr></thead><tbody>"]
    for n, row in enumerate(rows):
        extra = f" {attrs[n]}" if attrs else ""
        out.append(f"<tr{extra}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _stats_html(model: RunModel) -> str:
    s = model.stats
    esc = html.escape
    us = 1e-3
    per_name = sorted(s.per_name.items(), key=lambda kv: -kv[1]["total"])
    rows = [[esc(short(name, 60)), str(int(v["count"])), fmt_ns(v["total"]), f"{v['mean'] * us:.1f}",
             f"{v['min'] * us:.1f}", f"{v['p50'] * us:.1f}", f"{v['p99'] * us:.1f}", f"{v['max'] * us:.1f}"]
            for name, v in per_name[:MAX_TABLE_ROWS]]
    parts = ["<h3>Per op name</h3>",
             _table(["op name", "count", "total", "mean us", "min us", "p50 us", "p99 us", "max us"], rows)]
    if len(per_name) > MAX_TABLE_ROWS:
        parts.append(f'<p class="note">{len(per_name) - MAX_TABLE_ROWS} more names not shown.</p>')
    lane_rows = [[esc(short(lane, 60)), str(int(v["ops"])), fmt_ns(v["busy"]), f"{v['utilisation']:.0%}"]
                 for lane, v in sorted(s.per_lane.items())]
    parts += ["<h3>Per worker or stream</h3>", _table(["worker / stream", "ops", "busy", "utilisation"],
                                                      lane_rows)]
    q = s.queue_delay
    summary = [f"wall {fmt_ns(s.wall_ns)}", f"achieved parallelism {s.parallelism:.2f}",
               f"critical path {fmt_ns(s.critical_path_ns)} through {len(model.critical)} ops"]
    if q:
        summary.append(f"queueing delay (ready to start): mean {q['mean'] * us:.1f} us, p50 "
                       f"{q['p50'] * us:.1f} us, p99 {q['p99'] * us:.1f} us, max {q['max'] * us:.1f} us")
    parts.insert(0, "<ul>" + "".join(f"<li>{esc(x)}</li>" for x in summary) + "</ul>")
    path_rows, attrs = [], []
    for i in model.critical[:MAX_TABLE_ROWS]:
        r = model.op(i)
        path_rows.append([f"#{r.id}", esc(short(r.name, 60)), esc(short(r.lane, 40)), fmt_ns(r.start),
                          fmt_ns(r.duration)])
        attrs.append(f'class="pick" data-op="{i}"')
    parts += ["<h3>Critical path</h3>", _table(["id", "op", "lane", "start", "duration"], path_rows, attrs)]
    return "".join(parts)


def _gaps_html(model: RunModel) -> str:
    gaps = model.gaps()
    by_lane: dict[int, list] = {}
    for g in gaps:
        by_lane.setdefault(g.lane, []).append(g)
    esc = html.escape
    rows, attrs = [], []
    for n, lane in enumerate(model.lanes):
        mine = sorted(by_lane.get(n, []), key=lambda g: -g.duration)
        total = sum(g.duration for g in mine)
        for g in mine[:GAPS_PER_LANE]:
            nxt = model.op(g.next_op)
            if g.waited_for is None:
                why = "nothing: it was ready (or not yet pushed)"
            else:
                w = model.op(g.waited_for)
                why = f"#{w.id} {esc(short(w.name, 40))} on {esc(short(w.lane, 30))}"
            rows.append([esc(short(lane.label, 40)), fmt_ns(g.start), fmt_ns(g.duration),
                         f"#{nxt.id} {esc(short(nxt.name, 40))}", why])
            attrs.append(f'class="pick" data-op="{g.next_op}" data-t0="{g.start}" data-t1="{g.end}"')
        if len(mine) > GAPS_PER_LANE:
            rest = f"{len(mine)} gaps in all ({len(mine) - GAPS_PER_LANE} shorter ones not listed)"
            rows.append([esc(short(lane.label, 40)), "", fmt_ns(total), rest, ""])
            attrs.append('class="more"')
    if not rows:
        return '<p class="note">No lane was idle for more than 0.2% of the run.</p>'
    return _table(["lane", "idle from", "idle for", "then ran", "waiting for"], rows, attrs)


def _policy(script: str) -> str:
    """The page may run its own script and nothing else (by hash), and fetch nothing."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src data:"


def _page(model: RunModel, picture, title: str) -> str:
    assets = files("viz")
    css = assets.joinpath("report.css").read_text(encoding="utf-8")
    script = assets.joinpath("report.js").read_text(encoding="utf-8")
    s = model.stats
    head = (f"{len(model)} ops on {len(model.lanes)} lanes \u00b7 wall {fmt_ns(s.wall_ns)} \u00b7 "
            f"critical path {fmt_ns(s.critical_path_ns)} \u00b7 parallelism {s.parallelism:.2f}")
    page = Template(assets.joinpath("report.html").read_text(encoding="utf-8"))
    return page.substitute(policy=_policy(script), title=html.escape(short(title, 200)), css=css,
                           summary=html.escape(head), graph=_graph_svg(picture), stats=_stats_html(model),
                           gaps=_gaps_html(model), data=_json_for_html(_data(model, picture)), script=script)
