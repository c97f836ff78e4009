"""Plotly layer x head heatmap of any head ``Scores``."""

from __future__ import annotations

import plotly.graph_objects as go

from circuitkit import names
from circuitkit.scores import Scores


def head_heatmap(scores: Scores, title: str | None = None, colorscale: str = "Viridis",
                 zmid: float | None = None) -> go.Figure:
    """A heatmap with one row per layer and one column per head; hover shows the head id and score.

    ``zmid`` centres a diverging colorscale (e.g. ``0`` with ``"RdBu"`` for signed scores).
    """
    grid = scores.head_grid()
    n_layers, n_heads = grid.shape
    hover = [[names.head(layer, h) for h in range(n_heads)] for layer in range(n_layers)]
    values = [[None if v != v else v for v in row] for row in grid.tolist()]  # NaN -> gap
    heatmap = go.Heatmap(
        z=values, x=list(range(n_heads)), y=list(range(n_layers)), text=hover, colorscale=colorscale,
        zmid=zmid, colorbar={"title": scores.method},
        hovertemplate="%{text}<br>score=%{z:.4g}<extra></extra>",
    )
    fig = go.Figure(heatmap)
    fig.update_layout(
        title=title if title is not None else f"{scores.method} scores ({scores.task})",
        xaxis={"title": "head", "dtick": 1}, yaxis={"title": "layer", "dtick": 1, "autorange": "reversed"},
    )
    return fig
