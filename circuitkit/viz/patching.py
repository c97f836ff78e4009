"""Plotly heatmaps of activation- and path-patching grids."""

from __future__ import annotations

import plotly.graph_objects as go

from circuitkit.scores import Scores


def patching_heatmap(scores: Scores) -> go.Figure:
    """A Plotly heatmap of activation- or path-patching scores from ``scores.meta["grid"]``.

    ``[layer, head]`` -> layer x head; ``[layer, pos]`` -> layer x position; per-head grids by
    position -> (layer, head) rows x position columns.
    """
    grid, dims = scores.meta["grid"], tuple(scores.meta["grid_dims"])
    n_layers = grid.shape[0]
    if dims == ("layer",):
        z, rows, cols, xtitle = grid[:, None], [f"L{layer}" for layer in range(n_layers)], ["all"], ""
    elif dims == ("layer", "head"):
        z, rows, cols, xtitle = grid, [f"L{layer}" for layer in range(n_layers)], list(range(grid.shape[1])), "head"
    elif dims == ("layer", "pos"):
        z, rows, cols, xtitle = grid, [f"L{layer}" for layer in range(n_layers)], list(range(grid.shape[1])), "position"
    else:  # ("layer", "pos", "head") or ("layer", "head", "dest_pos")
        per_head = grid.permute(0, 2, 1) if dims == ("layer", "pos", "head") else grid
        n_heads, n_pos = per_head.shape[1], per_head.shape[2]
        z = per_head.reshape(n_layers * n_heads, n_pos)
        rows = [f"L{layer}.H{h}" for layer in range(n_layers) for h in range(n_heads)]
        cols, xtitle = list(range(n_pos)), "destination position" if "dest_pos" in dims else "position"
    fig = go.Figure(go.Heatmap(z=z.tolist(), x=cols, y=rows, colorscale="RdBu", zmid=0,
                               colorbar={"title": "normalized metric"}))
    fig.update_layout(
        title=f"{scores.method}: {scores.meta.get('target', scores.meta.get('receiver_input', ''))} "
              f"on {scores.task} ({scores.metric})",
        xaxis_title=xtitle, yaxis_title="layer", yaxis={"autorange": "reversed"},
    )
    return fig
