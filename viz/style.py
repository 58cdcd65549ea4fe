"""What every picture shares: the op-name palette, lane order, and text made safe to show.

Colours follow op names, ordered by total time (the busiest name gets the
first colour), so the timeline, the dependency graph and the report agree.
Names are user data: :func:`clean_text` replaces what XML cannot carry
(control characters, unpaired surrogates) before any renderer escapes it.
"""

from __future__ import annotations

import re
from collections import defaultdict

__all__ = ["CRITICAL", "EDGE_STYLE", "PALETTE", "clean_text", "color_for", "colors_by_total", "lane_order",
           "name_colors", "node_shape", "short", "text_color"]

# line style of a dependency by the hazard it orders; the critical path's colour
EDGE_STYLE = {"RAW": "solid", "WAR": "dashed", "WAW": "dotted"}
CRITICAL = "#c0392b"

# Colour-blind-friendly, distinct categories (Okabe-Ito, then tints).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000", "#7FB8D9", "#F3CF80", "#80CFB9", "#EAAF80", "#E6BCD3", "#999999")

_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def node_shape(device: str) -> str:
    """Box for CPU ops, hexagon for GPU ops."""
    return "hexagon" if str(device).startswith("gpu") else "box"


def color_for(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def name_colors(ops) -> dict[str, str]:
    """Op name -> fill colour, names ordered by total time (ties by name); the order is the dict's."""
    totals: dict[str, int] = defaultdict(int)
    for r in ops:
        totals[r.name] += r.duration
    return colors_by_total(totals)


def colors_by_total(totals: dict[str, float]) -> dict[str, str]:
    """Op name -> fill colour from each name's total time (see :func:`name_colors`)."""
    names = sorted(totals, key=lambda n: (-totals[n], n))
    return {n: color_for(k) for k, n in enumerate(names)}


def text_color(fill: str) -> str:
    """Black or white, whichever reads on ``fill`` (#rrggbb)."""
    r, g, b = (int(fill[k:k + 2], 16) for k in (1, 3, 5))
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#ffffff"


def clean_text(s: str) -> str:
    """``s`` with characters that XML and UTF-8 cannot carry replaced by U+FFFD."""
    return _UNSAFE.sub("\ufffd", s)


def short(s: str, n: int) -> str:
    """``s`` cleaned and cut to ``n`` characters (an ellipsis marks the cut)."""
    s = clean_text(s)
    return s if len(s) <= n else s[:n - 1] + "\u2026"


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def lane_order(keys) -> list[tuple[int, str]]:
    """(engine, lane) keys in display order: per engine, CPU workers, GPU streams, then skipped ops."""
    def rank(key):
        engine, lane = key
        kind = 2 if lane == "(skipped)" else 1 if lane.startswith("gpu") else 0
        return (engine, kind, _natural(lane))
    return sorted(set(keys), key=rank)
