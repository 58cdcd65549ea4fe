"""A timeline of a trace as SVG: one lane per worker or stream, a bar per op.

Bars are coloured by op name (legend on the right), gaps are idle time, the
critical path is outlined in red and joined by a red line, failed ops have a
red border and skipped ones are hatched grey.  Threads that waited
(``wait_for_var``, ``wait_all``) get lanes of their own at the bottom.
Hovering a bar shows the op's id, vars, times and queueing delay.
"""

from __future__ import annotations

from collections import defaultdict

from depengine.trace import Trace, atomic_write

from .style import CRITICAL, lane_order, name_colors
from .svg import Svg

__all__ = ["timeline"]

LANE_H = 22
GAP = 6
LEFT = 190
LEGEND_W = 210


def timeline(trace, path=None, *, width: int = 1200, max_legend: int = 20) -> str:
    """The SVG timeline of ``trace``; written to ``path`` too when given."""
    trace = Trace.coerce(trace)
    ops = [r for r in trace.ops]
    lanes: dict[tuple[int, str], list] = defaultdict(list)
    for r in ops:
        lanes[(r.engine, r.lane)].append(r)
    order = lane_order(lanes)
    multi = len({r.engine for r in ops}) > 1
    wait_lanes: dict[str, list] = defaultdict(list)
    for w in trace.waits:
        wait_lanes[w.thread].append(w)
    t_end = max([r.gpu_end or r.end for r in ops] + [w.end for w in trace.waits] + [1])
    plot_w = width - LEFT - LEGEND_W - 20
    n_lanes = len(order) + len(wait_lanes)
    height = 60 + n_lanes * (LANE_H + GAP) + 50

    totals: dict[str, int] = defaultdict(int)
    for r in ops:
        totals[r.name] += r.duration
    colors = name_colors(ops)
    names = list(colors)

    def x(ns: float) -> float:
        return LEFT + ns / t_end * plot_w

    svg = Svg(width, max(height, 80 + min(len(names), max_legend) * 18))
    svg.text(10, 22, f"depengine timeline: {len(ops)} ops, {t_end / 1e6:.3f} ms", 15, font_weight="bold")
    y0 = 40
    _axis(svg, x, t_end, y0 + n_lanes * (LANE_H + GAP) + 4)
    svg.parts.append('<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
                     'patternTransform="rotate(45)"><rect width="6" height="6" fill="#eee"/>'
                     '<line x1="0" y1="0" x2="0" y2="6" stroke="#999" stroke-width="2"/></pattern></defs>')
    on_path = set(trace.critical_path())
    centers: dict[tuple[int, int], tuple[float, float]] = {}
    for n, key in enumerate(order):
        y = y0 + n * (LANE_H + GAP)
        svg.bar(LEFT, y, plot_w, LANE_H, fill="#f7f7f7")
        device = lanes[key][0].device
        label = f"engine {key[0]} {key[1]}" if multi else f"{device} {key[1]}"
        svg.text(LEFT - 6, y + LANE_H * 0.7, label[:30], 11, text_anchor="end")
        for r in lanes[key]:
            end = r.gpu_end or r.end
            attrs = {"fill": colors[r.name]}
            if r.state == "skipped":
                attrs = {"fill": "url(#hatch)"}
            elif r.state == "failed":
                attrs.update(stroke="red", stroke_width=2)
            if r.key in on_path:
                attrs.update(stroke=CRITICAL, stroke_width=2.5)
            tip = (f"#{r.id} {r.name} [{r.state}] {r.device} {r.lane}\n"
                   f"start {r.start / 1e3:.1f} us, {r.duration / 1e3:.1f} us, queued "
                   f"{max(0, r.start - r.ready) / 1e3:.1f} us\n"
                   f"reads {', '.join(f'{nm}@v{v}' for _, nm, v in r.reads) or '-'}\n"
                   f"writes {', '.join(f'{nm}@v{v}' for _, nm, v in r.writes) or '-'}")
            svg.bar(x(r.start), y + 2, x(end) - x(r.start), LANE_H - 4, tooltip=tip, **attrs)
            centers[r.key] = ((x(r.start) + x(end)) / 2, y + LANE_H / 2)
    path_pts = [centers[k] for k in trace.critical_path() if k in centers]
    if len(path_pts) > 1:
        svg.polyline(path_pts, stroke=CRITICAL, stroke_width=1.5, stroke_dasharray="4,3", opacity=0.8)
    for n, (thread, ws) in enumerate(sorted(wait_lanes.items()), start=len(order)):
        y = y0 + n * (LANE_H + GAP)
        svg.bar(LEFT, y, plot_w, LANE_H, fill="#fbfbf0")
        svg.text(LEFT - 6, y + LANE_H * 0.7, f"waits: {thread}"[:30], 11, text_anchor="end")
        for w in ws:
            svg.bar(x(w.start), y + 6, x(w.end) - x(w.start), LANE_H - 12, fill="#bbbbbb",
                    tooltip=f"{w.what}: {(w.end - w.start) / 1e3:.1f} us, {w.outcome}")
    lx = LEFT + plot_w + 20
    svg.text(lx, 40, "op names (by total time)", 11, font_weight="bold")
    for k, name in enumerate(names[:max_legend]):
        ly = 56 + k * 18
        svg.bar(lx, ly - 10, 12, 12, fill=colors[name])
        svg.text(lx + 18, ly, f"{name[:22]} ({totals[name] / 1e6:.2f} ms)", 10)
    if len(names) > max_legend:
        svg.text(lx, 56 + max_legend * 18, f"... {len(names) - max_legend} more", 10)
    ly = 56 + min(len(names), max_legend) * 18 + 14
    svg.line(lx, ly - 4, lx + 14, ly - 4, stroke=CRITICAL, stroke_width=2.5)
    svg.text(lx + 18, ly, "critical path", 10)
    text = str(svg)
    if path is not None:
        with atomic_write(path) as f:
            f.write(text)
    return text


def _axis(svg: Svg, x, t_end: int, y: float) -> None:
    svg.line(x(0), y, x(t_end), y, stroke="black")
    step = _nice_step(t_end / 8)
    t = 0.0
    while t <= t_end:
        svg.line(x(t), y, x(t), y + 4, stroke="black")
        svg.text(x(t), y + 16, _fmt(t), 10, text_anchor="middle")
        t += step
    svg.text(x(t_end / 2), y + 32, "time since the first push", 11, text_anchor="middle")


def _nice_step(raw: float) -> float:
    if raw <= 0:
        return 1.0
    mag = 10 ** len(str(int(raw))) / 10
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _fmt(ns: float) -> str:
    if ns >= 1e9:
        return f"{ns / 1e9:g} s"
    if ns >= 1e6:
        return f"{ns / 1e6:g} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:g} us"
    return f"{ns:g} ns"
