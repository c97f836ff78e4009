"""``circuitkit patch MODEL --task ioi --target head_out [--by-pos] --out scores.csv [--html map.html]``."""

from __future__ import annotations

from pathlib import Path

from circuitkit.atomic import write_with
from circuitkit.patching.activation import DIRECTIONS, TARGETS


def register(sub) -> None:
    patch = sub.add_parser(
        "patch", help="exact activation patching (per layer / head / position)",
        description="Patch clean activations into the corrupted run (or the reverse with --direction noise) "
                    "for every layer / head (/ position) of a target and write the normalised metric "
                    "(0 = corrupted, 1 = clean) as a table and optionally a Plotly heatmap.",
    )
    patch.add_argument("model", help="zoo:NAME, a TransformerLens model name, or a local Hugging Face directory")
    patch.add_argument("--task", default=None,
                       help="task builder: ioi, induction, greater_than, multiple_choice, needle "
                            "(default: a zoo model's own task, else ioi)")
    patch.add_argument("--n-prompts", type=int, default=16, help="prompts to build (default 16)")
    patch.add_argument("--target", default="head_out", choices=list(TARGETS), help="what to patch (default head_out)")
    patch.add_argument("--by-pos", action="store_true", help="one patch per position")
    patch.add_argument("--direction", default="denoise", choices=list(DIRECTIONS))
    patch.add_argument("--batch-size", type=int, default=None, help="rows per forward pass")
    patch.add_argument("--out", required=True, help="scores table: .csv or .parquet")
    patch.add_argument("--html", default=None, help="write a Plotly heatmap to this HTML file")
    patch.add_argument("--device", default="cpu")
    patch.add_argument("--no-progress", action="store_true")
    patch.set_defaults(func=_cmd_patch)


def _cmd_patch(args) -> int:
    out = Path(args.out)
    if out.suffix not in (".csv", ".parquet"):
        raise ValueError(f"--out must end in .csv or .parquet, got {args.out!r}")
    if args.html is not None and not args.html.endswith(".html"):
        raise ValueError(f"--html must end in .html, got {args.html!r}")
    if args.n_prompts < 1:
        raise ValueError(f"--n-prompts must be at least 1, got {args.n_prompts}")
    from circuitkit.models.loading import load_model
    from circuitkit.patching.activation import activation_patching
    from circuitkit.tasks.builders import build_task

    model = load_model(args.model, device=args.device)
    if args.task is None and str(args.model).startswith("zoo:"):
        from circuitkit.zoo.registry import zoo_task

        task = zoo_task(str(args.model)[len("zoo:"):], model, n_prompts=args.n_prompts)
    else:
        task = build_task(args.task or "ioi", model, n_prompts=args.n_prompts)
    scores = activation_patching(model, task, args.target, by_pos=args.by_pos, direction=args.direction,
                                 batch_size=args.batch_size, progress=not args.no_progress)
    frame = scores.to_frame()
    if out.suffix == ".csv":
        write_with(out, lambda p: frame.to_csv(p, index=False), make_parents=True)
    else:
        write_with(out, lambda p: frame.to_parquet(p, index=False), make_parents=True)
    if args.html:
        fig = patching_heatmap(scores)
        write_with(Path(args.html), lambda p: fig.write_html(p, include_plotlyjs="cdn"), make_parents=True)
    print(f"{len(scores)} scores ({args.target}, {args.direction}, clean {scores.meta['clean_score']:.4g}, "
          f"corrupted {scores.meta['corrupted_score']:.4g}) -> {out}")
    for label, value in scores.top(5):
        print(f"  {label:14s} {value:+.4f}")
    return 0


def patching_heatmap(scores):
    """A Plotly heatmap of activation- or path-patching scores from ``scores.meta["grid"]``.

    ``[layer, head]`` -> layer x head; ``[layer, pos]`` -> layer x position; per-head grids by
    position -> (layer, head) rows x position columns.
    """
    import plotly.graph_objects as go

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
                               colorbar={"title": "normalised metric"}))
    fig.update_layout(
        title=f"{scores.method}: {scores.meta.get('target', scores.meta.get('receiver_input', ''))} "
              f"on {scores.task} ({scores.metric})",
        xaxis_title=xtitle, yaxis_title="layer", yaxis={"autorange": "reversed"},
    )
    return fig
