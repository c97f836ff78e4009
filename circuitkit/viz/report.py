"""``write_report(DIR)``: ``report.html`` (Plotly figures) and ``summary.csv`` for a study folder."""

from __future__ import annotations

import html
import os
from pathlib import Path

from circuitkit.atomic import write_text
from circuitkit.errors import InputError
from circuitkit.studies.store import load_results
from circuitkit.studies.summary import summarize
from circuitkit.viz.studies import ablation_comparison, damage_bar, head_heatmaps


def write_report(study_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``summary.csv`` (atomically) into ``out_dir`` (default: the study folder).

    The page holds layer x head heatmaps per model / task (one panel per ablation kind), the
    most damaging targets, and a comparison of ablation kinds. Plotly's JavaScript is embedded,
    so the page works offline.
    """
    results = load_results(study_dir)
    if results.empty:
        raise InputError(f"no results in {str(study_dir)!r} yet; run `circuitkit study run SPEC` first")
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
