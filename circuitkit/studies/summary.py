"""A study's summary table: one row per target, averaged over seeds (the report's and ``summary.csv``'s rows)."""

from __future__ import annotations

import pandas as pd


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
