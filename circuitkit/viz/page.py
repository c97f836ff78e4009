"""The one way circuitkit writes an HTML page: self-contained (Plotly's JavaScript inline, no
network needed to open it), written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from circuitkit.atomic import write_text

__all__ = ["write_figure_html", "write_page"]


def write_figure_html(path: str | os.PathLike, fig, make_parents: bool = False) -> Path:
    """``fig`` (a Plotly figure) as a standalone page that opens offline."""
    return write_text(Path(path), fig.to_html(include_plotlyjs=True, full_html=True), make_parents=make_parents)


def write_page(path: str | os.PathLike, body: str, make_parents: bool = False) -> Path:
    """An HTML fragment (no scripts from elsewhere) as a standalone page."""
    return write_text(Path(path), f"<!doctype html><meta charset='utf-8'><body>{body}</body>", make_parents=make_parents)
