"""``circuitkit patch MODEL --task ioi --component head_out [--by-pos] --out scores.csv [--html map.html]``."""

from __future__ import annotations

from pathlib import Path

from circuitkit.cli.common import (
    add_model_argument,
    add_task_arguments,
    check_out_folder,
    int_at_least,
    model_from_args,
    task_from_args,
    write_figure,
    write_table,
)
from circuitkit.errors import InputError

COMMANDS = {"patch": "exact activation patching (per layer / head / position)"}


def register(sub) -> None:
    from circuitkit.patching.activation import TARGETS
    from circuitkit.patching.engine import DIRECTIONS

    patch = sub.add_parser(
        "patch", help=COMMANDS["patch"],
        description="Patch clean activations into the corrupted run (or the reverse with --direction noise) "
                    "for every layer / head (/ position) of a target and write the normalized metric "
                    "(0 = corrupted, 1 = clean) as a table and optionally a Plotly heatmap.",
    )
    add_model_argument(patch)
    add_task_arguments(patch, "a zoo model's own task, else ioi")
    patch.add_argument("--component", default="head_out", choices=list(TARGETS),
                       help="the activation to patch (formerly --target)")
    patch.add_argument("--by-pos", action="store_true", help="one patch per position")
    patch.add_argument("--direction", default="denoise", choices=list(DIRECTIONS),
                       help="denoise: clean activations into the corrupted run; noise: corrupted into the clean run")
    patch.add_argument("--batch-size", type=int_at_least(1), default=None, help="rows per forward pass (default: sized to memory)")
    patch.add_argument("--out", required=True, help="scores table: .csv or .parquet")
    patch.add_argument("--html", default=None, help="write a Plotly heatmap to this HTML file")
    patch.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    patch.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    patch.set_defaults(func=_cmd_patch)


def _cmd_patch(args) -> int:
    out = Path(args.out)
    if out.suffix not in (".csv", ".parquet"):
        raise InputError(f"--out must end in .csv or .parquet, got {args.out!r}")
    if args.html is not None and not args.html.endswith(".html"):
        raise InputError(f"--html must end in .html, got {args.html!r}")
    if args.n_prompts is not None and args.n_prompts < 1:
        raise InputError(f"--n-prompts must be at least 1, got {args.n_prompts}")
    check_out_folder(out, args.html, make_parents=True)  # missing folders are made; a file or read-only one is refused
    from circuitkit.patching.activation import activation_patching
    from circuitkit.viz.patching import patching_heatmap

    model = model_from_args(args)
    task = task_from_args(args, model, default="ioi")
    scores = activation_patching(model, task, args.component, by_pos=args.by_pos, direction=args.direction,
                                 batch_size=args.batch_size, progress=not args.no_progress)
    write_table(out, scores.to_frame(), make_parents=True)
    if args.html:
        write_figure(args.html, patching_heatmap(scores), make_parents=True)
    print(f"{len(scores)} scores ({args.component}, {args.direction}, clean {scores.meta['clean_score']:.4g}, "
          f"corrupted {scores.meta['corrupted_score']:.4g}) -> {out}")
    for label, value in scores.top(5):
        print(f"  {label:14s} {value:+.4f}")
    return 0
