"""Needle accuracy against the share of the KV cache kept, for each head classification.

For each zoo retrieval model: score every head on the needle grid's prompts with each
classification (Wu et al.'s retrieval score, QRHead, LOCOS, DuoAttention's learned gates), then
for each K keep the full cache for the top-K heads and stream every other head (RazorAttention's
split: the first --sink tokens and the last --window), beside the full cache (K = all), the
all-streaming cache (K = 0) and --n-random random head sets of each size (seeds 0, 1, ...). Each
row is the needle accuracy averaged over the grid (lengths x depths) and the kept share of the
cache (per key / value head, averaged over the lengths).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/kv_compress.py [--html curve.html]

The gates are trained on the same prompts (the model frozen; --gate-steps steps, lr 0.05,
sparsity 0.5, the same sink / window). --html writes one Plotly figure per model (the curves of
`circuitkit.viz.heads_kv.kv_compress_figure`, one line per classification).
"""

from __future__ import annotations

import argparse
import random
import time

import pandas as pd
import torch

MODELS = ("retrieval-handbuilt", "needle-trained")
KINDS = ("retrieval", "qrhead", "locos", "duo")


def curve(name: str, args) -> pd.DataFrame:
    import circuitkit as ck
    from circuitkit.heads import duo_gates, head_scores
    from circuitkit.heads.kv import KVPolicy, needle_grid
    from circuitkit.tasks.builders import needle

    model = ck.load_model(f"zoo:{name}")
    params = {k: v for k, v in ck.zoo_card(name).task["params"].items()
              if k in ("values", "haystack", "needle_template", "question")}
    heads = [f"a{layer}.h{h}" for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    probe = needle(model, context_lengths=args.lengths, depths=args.depths, **params)
    cache: dict[frozenset, tuple[float, float]] = {}

    def grid(keep) -> tuple[float, float]:
        key = frozenset(keep)
        if key not in cache:
            cells = needle_grid(model, KVPolicy.razor(model, key, args.sink, args.window), args.lengths, args.depths,
                                **params)
            cache[key] = (float(cells.accuracy.mean()), float(cells.kv_kept.mean()))
        return cache[key]

    rows = []
    for kind in KINDS:
        start = time.perf_counter()
        if kind == "duo":
            scores = duo_gates(model, probe, steps=args.gate_steps, lr=0.05, sparsity=0.5, sink=args.sink,
                               window=args.window, progress=False)
        else:
            scores = head_scores(model, probe, kind)
        seconds = time.perf_counter() - start
        order = [label for label, _ in scores.top(len(heads), by_abs=False)]
        for k in range(len(heads) + 1):
            accuracy, kept = grid(order[:k])
            rows.append({"model": name, "selection": "detector", "detector": kind, "k": k, "seed": -1,
                         "heads": ",".join(order[:k]), "accuracy": accuracy, "kv_kept": kept,
                         "score_seconds": round(seconds, 2)})
    for k in range(len(heads) + 1):
        for seed in range(args.n_random):
            keep = random.Random(seed).sample(heads, k)
            accuracy, kept = grid(keep)
            rows.append({"model": name, "selection": "random", "detector": "random", "k": k, "seed": seed,
                         "heads": ",".join(keep), "accuracy": accuracy, "kv_kept": kept, "score_seconds": 0.0})
    return pd.DataFrame(rows)


def figure(table: pd.DataFrame, title: str):
    import plotly.graph_objects as go

    from circuitkit.viz.heads_kv import kv_compress_figure

    fig = kv_compress_figure(table[(table.detector == "retrieval") | (table.selection == "random")], title)
    fig.data[0].name = "retrieval heads"
    for kind in KINDS[1:]:
        part = table[table.detector == kind].sort_values("kv_kept")
        fig.add_trace(go.Scatter(x=part.kv_kept, y=part.accuracy, mode="lines+markers", name=f"{kind} heads",
                                 customdata=part[["k", "heads"]].values,
                                 hovertemplate="k=%{customdata[0]}<br>%{customdata[1]}<br>kept %{x:.1%}, "
                                               "accuracy %{y:.3f}<extra></extra>"))
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--n-random", type=int, default=5)
    parser.add_argument("--gate-steps", type=int, default=60)
    parser.add_argument("--html", default=None, help="write the curves as one HTML page (a figure per model)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"grid: lengths {args.lengths} x depths {args.depths}; streamed heads keep sink {args.sink} + window "
          f"{args.window}; random: {args.n_random} seeds per K")
    tables = []
    for name in args.models:
        start = time.perf_counter()
        table = curve(name, args)
        tables.append(table)
        print(f"\n== zoo:{name} ({time.perf_counter() - start:.1f}s) ==")
        full = table[(table.selection == "detector") & (table.k == table.k.max())].accuracy.iloc[0]
        stream = table[(table.selection == "detector") & (table.k == 0)].accuracy.iloc[0]
        print(f"full cache: accuracy {full:.3f}, kept 100%; all streaming: accuracy {stream:.3f}, "
              f"kept {table[table.k == 0].kv_kept.iloc[0]:.1%}")
        wide = table[table.selection == "detector"].pivot_table(index="k", columns="detector", values="accuracy")
        drawn = table[table.selection == "random"].groupby("k")
        wide["random (mean)"] = drawn.accuracy.mean()
        wide["random (min..max)"] = [f"{lo:.3f}..{hi:.3f}" for lo, hi in zip(
            drawn.accuracy.min(), drawn.accuracy.max(), strict=True)]
        wide.insert(0, "kv_kept", table[table.selection == "detector"].groupby("k").kv_kept.first())
        print(wide[["kv_kept", *KINDS, "random (mean)", "random (min..max)"]].to_string(
            float_format=lambda x: f"{x:.3f}"))
        for kind in KINDS:
            part = table[table.detector == kind]
            print(f"  {kind:9s} order: {part.heads.iloc[-1]}  ({part.score_seconds.iloc[0]:.2f}s to score)")
    if args.html:
        html = "".join(figure(t, f"zoo:{t.model.iloc[0]}: needle accuracy vs kept KV cache").to_html(
            full_html=False, include_plotlyjs="inline" if i == 0 else False) for i, t in enumerate(tables))
        with open(args.html, "w") as f:
            f.write(f"<html><head><meta charset='utf-8'></head><body>{html}</body></html>")
        print(f"wrote {args.html}")


if __name__ == "__main__":
    main()
