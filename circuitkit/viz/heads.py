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


def needle_grid_figure(table, title: str | None = None) -> go.Figure:
    """Needle accuracy by context length (x) and depth (y) from `circuitkit.heads.kv.needle_grid`'s
    table, one panel per ``policy`` when the table has that column; the KV share each keeps in
    its panel's title."""
    from plotly.subplots import make_subplots

    policies = list(dict.fromkeys(table["policy"])) if "policy" in table else [None]
    fig = make_subplots(rows=1, cols=len(policies), shared_yaxes=True, subplot_titles=[
        f"{p or 'policy'}: KV kept {table[table.policy == p].kv_kept.mean() if p else table.kv_kept.mean():.0%}"
        for p in policies])
    for i, policy in enumerate(policies, start=1):
        part = table if policy is None else table[table.policy == policy]
        grid = part.pivot(index="depth", columns="context_length", values="accuracy")
        fig.add_trace(go.Heatmap(z=grid.values, x=[str(c) for c in grid.columns], y=[f"{d:g}" for d in grid.index],
                                 zmin=0, zmax=1, colorscale="Viridis", showscale=i == len(policies),
                                 colorbar={"title": "accuracy"},
                                 hovertemplate="length %{x}, depth %{y}: accuracy %{z:.2f}<extra></extra>"),
                      row=1, col=i)
        fig.update_xaxes(title_text="context length (tokens)", row=1, col=i)
    fig.update_yaxes(title_text="needle depth", row=1, col=1)
    fig.update_layout(title=title or "needle in a haystack", template="plotly_white", height=420)
    return fig
