"""Plotly curve of needle accuracy against kept KV-cache share (`kv_compress_curve`'s table)."""

from __future__ import annotations

import plotly.graph_objects as go

__all__ = ["kv_compress_figure"]


def kv_compress_figure(table, title: str | None = None) -> go.Figure:
    """Accuracy vs kept KV share: the detector's head sets as a line, each random draw as a point
    and the random draws' mean per ``k`` as a dashed line; hover shows ``k`` and the heads."""
    fig = go.Figure()
    detected = table[table.selection == "detector"].sort_values("kv_kept")
    fig.add_trace(go.Scatter(x=detected.kv_kept, y=detected.accuracy, mode="lines+markers",
                             name=f"{detected.detector.iloc[0] if len(detected) else ''} heads",
                             customdata=detected[["k", "heads"]].values,
                             hovertemplate="k=%{customdata[0]}<br>%{customdata[1]}<br>kept %{x:.1%}, "
                                           "accuracy %{y:.3f}<extra></extra>"))
    drawn = table[table.selection == "random"]
    if len(drawn):
        fig.add_trace(go.Scatter(x=drawn.kv_kept, y=drawn.accuracy, mode="markers", name="random heads (each seed)",
                                 marker={"opacity": 0.5}, customdata=drawn[["k", "seed"]].values,
                                 hovertemplate="k=%{customdata[0]}, seed %{customdata[1]}<br>kept %{x:.1%}, "
                                               "accuracy %{y:.3f}<extra></extra>"))
        mean = drawn.groupby("k", as_index=False)[["kv_kept", "accuracy"]].mean().sort_values("kv_kept")
        fig.add_trace(go.Scatter(x=mean.kv_kept, y=mean.accuracy, mode="lines", name="random heads (mean)",
                                 line={"dash": "dash"}))
    fig.update_layout(title=title or "needle accuracy vs kept KV cache", xaxis_title="share of the KV cache kept",
                      yaxis_title="needle accuracy", xaxis_tickformat=".0%", yaxis_range=[-0.05, 1.05])
    return fig
