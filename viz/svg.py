"""A tiny SVG writer (no dependency): elements as strings, attributes escaped."""

from __future__ import annotations

from xml.sax.saxutils import escape as _escape
from xml.sax.saxutils import quoteattr

from .style import clean_text

__all__ = ["Svg", "escape"]


def escape(s: str) -> str:
    """Text safe inside an XML element (user data: op and var names)."""
    return _escape(clean_text(s))


def _attrs(attrs: dict) -> str:
    return "".join(f" {k.rstrip('_').replace('_', '-')}={quoteattr(clean_text(str(v)))}"
                   for k, v in attrs.items() if v is not None)


class Svg:
    """Collects elements; ``str(svg)`` is the document."""

    def __init__(self, width: float, height: float, font: str = "sans-serif") -> None:
        self.width = width
        self.height = height
        self.parts: list[str] = []
        self.font = font

    def bar(self, x, y, w, h, tooltip: str | None = None, **attrs) -> None:
        body = f"<title>{escape(tooltip)}</title>" if tooltip else ""
        box = {"x": f"{x:.2f}", "y": f"{y:.2f}", "width": f"{max(w, 0.5):.2f}", "height": f"{h:.2f}"}
        self.parts.append(f"<rect{_attrs({**box, **attrs})}>{body}</rect>")

    def line(self, x1, y1, x2, y2, **attrs) -> None:
        ends = {"x1": f"{x1:.2f}", "y1": f"{y1:.2f}", "x2": f"{x2:.2f}", "y2": f"{y2:.2f}"}
        self.parts.append(f"<line{_attrs({**ends, **attrs})}/>")

    def polyline(self, points, **attrs) -> None:
        pts = " ".join(f"{x:.2f},{y:.2f}" for x, y in points)
        self.parts.append(f"<polyline{_attrs(dict(points=pts, fill='none', **attrs))}/>")

    def circle(self, x, y, r, tooltip: str | None = None, **attrs) -> None:
        body = f"<title>{escape(tooltip)}</title>" if tooltip else ""
        centre = {"cx": f"{x:.2f}", "cy": f"{y:.2f}", "r": r}
        self.parts.append(f"<circle{_attrs({**centre, **attrs})}>{body}</circle>")

    def text(self, x, y, s: str, size: int = 12, **attrs) -> None:
        self.parts.append(f"<text{_attrs(dict(x=f'{x:.2f}', y=f'{y:.2f}', font_size=size, **attrs))}>"
                          f"{escape(s)}</text>")

    def __str__(self) -> str:
        w, h = f"{self.width:.0f}", f"{self.height:.0f}"
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
                f'viewBox="0 0 {w} {h}" font-family="{self.font}">')
        return head + '<rect width="100%" height="100%" fill="white"/>' + "".join(self.parts) + "</svg>\n"
