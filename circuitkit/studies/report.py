"""``write_report(DIR)``: ``report.html`` (Plotly figures) and ``summary.csv`` for a study folder."""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd

from circuitkit.atomic import write_text
from circuitkit.studies.store import load_results


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, task, ablation, target): metric means over seeds, ``recovered`` std
    and ``damage`` (1 - recovered), most damaging first within each model / task / ablation."""
    key = ["model", "task", "ablation", "target", "target_kind", "components"]
    value_cols = [c for c in results.columns if c not in key and c not in ("seed", "seconds", "n_prompts", "n_components")
                  and pd.api.types.is_numeric_dtype(results[c])]
    grouped = results.groupby(key, as_index=False, dropna=False)
    summary = grouped[value_cols].mean()
    summary["recovered_std"] = grouped["recovered"].std()["recovered"]
    summary["n_seeds"] = grouped["seed"].nunique()["seed"]
    summary["damage"] = 1 - summary["recovered"]
    return summary.sort_values(["model", "task", "ablation", "recovered"], kind="stable").reset_index(drop=True)


def write_report(study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``summary.csv`` (atomically) into ``out_dir`` (default: the study folder).

    The page holds layer x head heatmaps per model / task (one panel per ablation kind), the
    most damaging targets, and a comparison of ablation kinds. Plotly's JavaScript is embedded,
    so the page works offline.
    """
    from circuitkit.viz.studies import ablation_comparison, damage_bar, head_heatmaps

    results = load_results(study_dir)
    if results.empty:
        raise ValueError(f"no results in {str(study_dir)!r} yet; run `circuitkit study run SPEC` first")
    out = Path(out_dir) if out_dir is not None else Path(study_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for model in sorted(results.model.unique()):
        for task in sorted(results[results.model == model].task.unique()):
            if ((results.model == model) & (results.task == task) & (results.target_kind == "head")).any():
                figures.append(head_heatmaps(results, model, task))
    figures += [damage_bar(results), ablation_comparison(results)]
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    summary = summarize(results)
    n_units = len(results)
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>circuitkit study report</title></head>"
        "<body style='font-family:sans-serif'>"
        f"<h1>Ablation study: {html.escape(str(Path(study_dir).resolve().name))}</h1>"
        f"<p>{n_units} units: {results.model.nunique()} models, {results.task.nunique()} tasks, "
        f"ablations {', '.join(sorted(results.ablation.unique()))}, seeds {sorted(results.seed.unique().tolist())}. "
        "<i>recovered</i> = (ablated - corrupted) / (clean - corrupted) of the first metric: "
        "1 = behaviour intact, 0 = as bad as the corrupted run.</p>"
        + "\n".join(f"<div>{p}</div>" for p in parts)
        + "</body></html>\n"
    )
    html_path, csv_path = out / "report.html", out / "summary.csv"
    write_text(html_path, page)
    write_text(csv_path, summary.to_csv(index=False))
    return html_path, csv_path
