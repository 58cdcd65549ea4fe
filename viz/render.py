"""Rendering DOT with graphviz's ``dot`` program, with one clear message when it is missing."""

from __future__ import annotations

import os
import shutil

from depengine.trace import atomic_write

__all__ = ["DOT_MISSING", "GraphvizMissingError", "render"]

DOT_MISSING = ("graphviz's 'dot' program is missing: install the system package 'graphviz' "
               "(Debian/Ubuntu: sudo apt-get install graphviz; macOS: brew install graphviz)")

FORMATS = ("svg", "png", "pdf")


class GraphvizMissingError(RuntimeError):
    """Rendering needs the ``dot`` program; the engine itself never does."""


def render(graph, path) -> str:
    """Render a ``graphviz.Digraph`` to ``path``; the format comes from its suffix."""
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"{path}: unknown image format {fmt!r}; use one of {', '.join(FORMATS)}")
    if shutil.which("dot") is None:
        raise GraphvizMissingError(DOT_MISSING)
    data = graph.pipe(format=fmt)
    with atomic_write(path, "wb") as f:
        f.write(data)
    return path
