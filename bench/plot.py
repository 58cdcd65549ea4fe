"""The METG sweep as an SVG: efficiency against task granularity, one line per system."""

from __future__ import annotations

import math

from viz.style import color_for
from viz.svg import Svg

from .metg import Measurement, Metg

__all__ = ["efficiency_plot"]


def efficiency_plot(sweep: list[Measurement], eff: dict[int, float], metgs: list[Metg]) -> str:
    W, H, left, right, top, bottom = 760, 440, 70, 190, 40, 60
    pw, ph = W - left - right, H - top - bottom
    grans = [m.granularity_us for m in sweep if m.iterations]
    lo = 10 ** math.floor(math.log10(min(grans)))
    hi = 10 ** math.ceil(math.log10(max(grans)))
    if hi <= lo:
        hi = lo * 10

    def x(g):
        return left + (math.log10(g) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * pw

    def y(e):
        return top + (1 - min(max(e, 0.0), 1.05) / 1.05) * ph

    svg = Svg(W, H)
    svg.text(left, 22, "Efficiency vs task granularity (METG at the 50% line)", 15, font_weight="bold")
    svg.line(left, top + ph, left + pw, top + ph, stroke="black")
    svg.line(left, top, left, top + ph, stroke="black")
    decade = lo
    while decade <= hi * 1.0001:
        svg.line(x(decade), top, x(decade), top + ph, stroke="#ddd")
        svg.text(x(decade), top + ph + 18, f"{decade:g}", 11, text_anchor="middle")
        decade *= 10
    for e in (0.0, 0.25, 0.5, 0.75, 1.0):
        svg.line(left, y(e), left + pw, y(e), stroke="#ddd" if e != 0.5 else "#c00",
                 stroke_dasharray=None if e != 0.5 else "6,4")
        svg.text(left - 8, y(e) + 4, f"{e:.0%}", 11, text_anchor="end")
    svg.text(left + pw / 2, H - 15, "task granularity: wall time x cores / tasks (us, log scale)", 12,
             text_anchor="middle")
    svg.text(18, top + ph / 2, "efficiency", 12, text_anchor="middle",
             transform=f"rotate(-90 18 {top + ph / 2})")
    systems = list(dict.fromkeys(m.system for m in sweep))
    by_name = {m.system: m for m in metgs}
    for k, name in enumerate(systems):
        pts = sorted((m.granularity_us, eff[id(m)]) for m in sweep if m.system == name and m.iterations)
        color = color_for(k)
        svg.polyline([(x(g), y(e)) for g, e in pts], stroke=color, stroke_width=2)
        for g, e in pts:
            svg.circle(x(g), y(e), 3, fill=color, tooltip=f"{name}: {g:.1f} us, {e:.0%}")
        ly = top + 14 + 20 * k
        svg.line(left + pw + 15, ly - 4, left + pw + 35, ly - 4, stroke=color, stroke_width=3)
        metg_text = by_name[name].describe() if name in by_name else ""
        svg.text(left + pw + 40, ly, f"{name} {metg_text}", 11)
    return str(svg)
