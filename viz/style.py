"""How dependency graphs look: shared by the trace graphs, timelines and plan graphs."""

from __future__ import annotations

__all__ = ["CRITICAL", "EDGE_STYLE", "KIND_FILL", "node_shape"]

KIND_FILL = {"normal": "#dbe9f6", "prioritized": "#fde8b0", "copy": "#d4f0dc", "async": "#ecdcf2"}
EDGE_STYLE = {"RAW": "solid", "WAR": "dashed", "WAW": "dotted"}
CRITICAL = "#c0392b"


def node_shape(device: str) -> str:
    """Box for CPU ops, hexagon for GPU ops."""
    return "hexagon" if str(device).startswith("gpu") else "box"
