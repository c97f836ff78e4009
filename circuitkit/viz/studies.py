"""Plotly figures of a study's results table (`circuitkit.studies.load_results`)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from circuitkit.errors import InputError
from circuitkit.scores import Scores


def study_scores(results: pd.DataFrame, model: str, task: str, ablation: str, value: str = "recovered") -> Scores:
    """Per-component ``value`` (mean over seeds) of single-head / single-MLP targets as ``Scores``."""
    rows = results[(results.model == model) & (results.task == task) & (results.ablation == ablation)
                   & results.target_kind.isin(["head", "mlp"])]
    if rows.empty:
        raise InputError(f"no head or MLP rows for model {model!r}, task {task!r}, ablation {ablation!r}")
    means = rows.groupby("target", sort=True)[value].mean()
    return Scores.from_dict(means.to_dict(), method=f"{ablation}-ablation", task=task, metric=value,
                            meta={"model": model})


def head_heatmaps(results: pd.DataFrame, model: str, task: str, value: str = "recovered") -> go.Figure:
    """Layer x head heatmaps of ``value`` for one model and task, one panel per ablation kind.

    ``recovered`` = 1: the head's ablation leaves the behaviour intact; 0: as bad as corrupted.
    """
    kinds = sorted(results[(results.model == model) & (results.task == task)].ablation.unique())
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[f"{k} ablation" for k in kinds],
                        horizontal_spacing=0.08)
    for col, kind in enumerate(kinds, start=1):
        heads = results[(results.model == model) & (results.task == task) & (results.ablation == kind)
                        & (results.target_kind == "head")]
        if heads.empty:
            continue
        grid = study_scores(heads, model, task, kind, value).head_grid()
        fig.add_trace(go.Heatmap(
            z=grid.tolist(), x=[f"h{h}" for h in range(grid.shape[1])], y=[f"layer {la}" for la in range(grid.shape[0])],
            colorscale="RdBu", zmid=1.0 if value.endswith("recovered") else None, coloraxis=None,
            showscale=col == len(kinds), hovertemplate="%{y} %{x}: %{z:.3f}<extra>" + kind + "</extra>",
        ), row=1, col=col)
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    fig.update_layout(title=f"{model} on {task}: {value} with each head ablated", height=340)
    return fig


def damage_bar(results: pd.DataFrame, top: int = 20) -> go.Figure:
    """The ``top`` most damaging targets (lowest mean ``recovered`` over seeds), all models and tasks."""
    grouped = results.groupby(["model", "task", "ablation", "target"], as_index=False)["recovered"].mean()
    worst = grouped.dropna(subset=["recovered"]).nsmallest(top, "recovered").iloc[::-1]
    labels = worst.model + " | " + worst.task + " | " + worst.ablation + " | " + worst.target
    fig = go.Figure(go.Bar(x=1 - worst.recovered, y=labels, orientation="h",
                           hovertemplate="%{y}: damage %{x:.3f}<extra></extra>"))
    fig.update_layout(title=f"Most damaging targets (damage = 1 - recovered), top {len(worst)}",
                      xaxis_title="1 - recovered", height=max(300, 24 * len(worst) + 120))
    return fig


def ablation_comparison(results: pd.DataFrame) -> go.Figure:
    """``recovered`` of every target per model / task, one box per ablation kind (points shown)."""
    fig = go.Figure()
    groups = results.model + " | " + results.task
    for kind in sorted(results.ablation.unique()):
        rows = results.ablation == kind
        fig.add_trace(go.Box(x=groups[rows], y=results.recovered[rows], name=kind, boxpoints="all",
                             text=results.target[rows], hovertemplate="%{text}: %{y:.3f}<extra>" + kind + "</extra>"))
    fig.update_layout(boxmode="group", title="Recovered behaviour per target, by ablation kind",
                      yaxis_title="recovered (1 = intact, 0 = corrupted)")
    return fig
