"""``circuitkit discover`` and ``circuitkit export``."""

from __future__ import annotations

from pathlib import Path

from circuitkit.cli.common import (
    add_model_argument,
    add_task_arguments,
    check_out_folder,
    finite_float,
    model_from_args,
    task_from_args,
)
from circuitkit.errors import InputError

COMMANDS = {"discover": "find a circuit: score edges and prune", "export": "convert a circuit file to another format",
            "export-mib-submission": "write a circuit's scores into a MIB circuit-track submission folder"}


def register(sub) -> None:
    from circuitkit.ablation.kinds import ABLATION_KINDS, DEFAULT_ABLATION
    from circuitkit.attribution.edge import INTERPOLATIONS
    from circuitkit.circuit.discovery import DISCOVERY_METHODS, LEVELS
    from circuitkit.circuit.io import FORMATS
    from circuitkit.circuit.io.mib import DANGLING, SCORE_CHOICES, SIGNS
    from circuitkit.circuit.io.mib_folder import (
        MIB_MODELS,
        MIB_PERCENTAGES,
        MIB_TASKS,
        MODES,
        RANKINGS,
    )
    from circuitkit.circuit.selection import SELECTIONS

    disc = sub.add_parser(
        "discover", help=COMMANDS["discover"],
        description="Score MODEL's edges on TASK with METHOD, prune to a circuit (top-k, threshold, or the "
                    "smallest circuit reaching --faithfulness), evaluate it and write it.")
    add_model_argument(disc)
    add_task_arguments(disc, "the zoo card's task (required for other models)")
    disc.add_argument("--method", default="eap-ig", choices=tuple(DISCOVERY_METHODS),
                      help="; ".join(m.describe() for m in DISCOVERY_METHODS.values()))
    disc.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE", dest="method_args",
                      help="a hyper-parameter of --method (listed with its default under --method), repeatable; "
                           "VALUE is read as YAML: --method-arg steps=500 --method-arg lr=0.05")
    prune = disc.add_mutually_exclusive_group()
    prune.add_argument("--top-k", type=int, default=None, help="keep this many edges (by |score|)")
    prune.add_argument("--threshold", type=finite_float, default=None, help="keep edges with |score| >= this (ACDC: its tau)")
    disc.add_argument("--faithfulness", type=finite_float, default=0.9,
                      help="faithfulness the circuit must reach when neither --top-k nor --threshold (formerly --target)")
    disc.add_argument("--selection", default="top-k", choices=tuple(SELECTIONS),
                      help="how scored edges are picked, with --top-k as the size or else the smallest circuit "
                           "reaching --faithfulness (not with --threshold unless top-k): "
                           + "; ".join(s.describe() for s in SELECTIONS.values()))
    disc.add_argument("--selection-arg", action="append", default=[], metavar="KEY=VALUE", dest="selection_args",
                      help="a parameter of --selection (listed with its default under --selection), repeatable; "
                           "VALUE is read as YAML: --selection-arg n_resamples=20 --selection-arg agreement=0.8")
    disc.add_argument("--ablation", default=DEFAULT_ABLATION, choices=ABLATION_KINDS,
                      help="how edges outside the circuit are removed, when scoring and evaluating")
    disc.add_argument("--steps", type=int, default=None,
                      help="shorthand for --method-arg steps=N (eap-ig's integration steps, edge-pruning's "
                           "optimisation steps; default: the method's)")
    disc.add_argument("--interpolate", default=None, choices=INTERPOLATIONS,
                      help="eap-ig's path: the input embeddings (default), each layer's outputs in turn, or every "
                           "edge's mask at once ('mask', the only path with --level layers)")
    disc.add_argument("--level", default="edges", choices=LEVELS,
                      help="'edges': edges between heads and MLPs; 'layers': whole attention blocks and MLPs "
                           "(attn_out.L, mL) for models whose heads do not separate (MLA, Gemma-4) or a coarse "
                           "first look (eap-ig, eap, exact)")
    disc.add_argument("--no-route-cap", dest="route_cap", action="store_false",
                      help="rank edges by their raw scores, not capped by their receiver's widest route to the logits")
    disc.add_argument("--by-pos", action="store_true",
                      help="a position-resolved circuit: edges between (node, position) pairs, e.g. "
                           "a0.h0@3->a1.h0@3<k>, drawn token by token (eap-ig, eap, exact)")
    disc.add_argument("--stability", type=int, default=None, metavar="N",
                      help="also score the edges N times on random halves of the prompts and print how much the "
                           "top edges (Jaccard) and the ranking (Spearman) agree between runs")
    disc.add_argument("--out", required=True, help="circuit file (.json node-link, .graphml, .gexf)")
    disc.add_argument("--html", default=None, help="also write a standalone HTML rendering")
    disc.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    disc.add_argument("--no-progress", action="store_true", help="hide the progress bars (formerly --quiet)")
    disc.set_defaults(func=_cmd_discover)

    exp = sub.add_parser("export", help=COMMANDS["export"],
                         description="Read a circuit file (circuitkit JSON, GraphML, GEXF, EAP-IG/MIB JSON or an "
                                     "attribution graph) and write it in another format. Nothing is written on error.")
    exp.add_argument("circuit", help="input circuit file")
    exp.add_argument("--to", required=True, choices=FORMATS, help="the format to write")
    exp.add_argument("--out", required=True, help="the file to write (never the input)")
    exp.add_argument("--from", dest="src_format", default=None, choices=FORMATS,
                     help="input format (recognised from the suffix / keys by default)")
    mib = exp.add_argument_group("--to mib", "EAP-IG / MIB circuit JSON (see docs/circuits.md)")
    mib.add_argument("--sign", choices=SIGNS, default=None,
                     help="'mib' (default): -score, the loss's attribution, needed edges positive as MIB's CPR "
                          "expects; 'circuitkit': the scores as stored (metric(ablated) - metric(clean))")
    mib.add_argument("--scores", choices=SCORE_CHOICES, default=None,
                     help="'raw' (default): each edge's estimator score before route capping; "
                          "'circuit': the scores the circuit was pruned by")
    mib.add_argument("--dangling", choices=DANGLING, default=None,
                     help="'prune' (default): write the circuit MIB evaluates (nodes without inputs or outputs "
                          "dropped, listed in cfg.circuitkit); 'error': refuse when that differs from this circuit")
    mib.add_argument("--d-model", type=int, default=None, help="the model's d_model, when the circuit does not record it")
    exp.set_defaults(func=_cmd_export)

    sub_mib = sub.add_parser(
        "export-mib-submission", help=COMMANDS["export-mib-submission"],
        description="Read a circuit file whose edges carry scores for every edge of one of MIB's models (a "
                    "discover --out file, an EAP-IG importances file) and write it into the submission FOLDER "
                    "as its TASK_MODEL folder, the layout MIB's circuit-track evaluation reads: one importances "
                    f"file, or nine circuits at {', '.join(f'{k:g}' for k in MIB_PERCENTAGES)} % of the edges. "
                    "Nothing is written on error; see docs/circuits.md.")
    sub_mib.add_argument("circuit", help="input circuit file (any format load_circuit reads)")
    sub_mib.add_argument("--mib-task", required=True, choices=MIB_TASKS, help="MIB's task name")
    sub_mib.add_argument("--mib-model", required=True, choices=tuple(MIB_MODELS), help="MIB's model name")
    sub_mib.add_argument("--mode", default="importances", choices=MODES,
                         help="'importances': one file of every edge's score, MIB cuts its own circuits; "
                              "'circuits': nine circuits cut from the scores as MIB would")
    sub_mib.add_argument("--ranking", default="signed", choices=RANKINGS,
                         help="--mode circuits: 'signed' keeps the edges the behaviour needs most (CPR), "
                              "'absolute' the largest |score| (CMD)")
    sub_mib.add_argument("--out", required=True, help="the submission folder (one per method); made if missing")
    sub_mib.set_defaults(func=_cmd_export_mib_submission)


def _cmd_discover(args) -> int:
    from circuitkit.circuit.discovery import discover
    from circuitkit.circuit.io import check_circuit_path, save_circuit
    from circuitkit.circuit.selection import check_selection_args
    from circuitkit.cli.common import parse_key_values
    from circuitkit.viz import circuit_html

    out = Path(args.out)
    check_out_folder(out, args.html)
    check_circuit_path(out)  # a suffix that names no format is refused before the model loads
    method_args = parse_key_values(args.method_args, "--method-arg", "steps=500")
    selection_args = parse_key_values(args.selection_args, "--selection-arg", "n_resamples=20")
    check_selection_args(args.selection, selection_args)  # refused before the model loads
    model = model_from_args(args)
    task = task_from_args(args, model)
    circuit = discover(model, task, args.method, top_k=args.top_k, threshold=args.threshold, target=args.faithfulness,
                       ablation=args.ablation, steps=args.steps, route_cap=args.route_cap,
                       progress=not args.no_progress, interpolate=args.interpolate, by_pos=args.by_pos,
                       level=args.level, method_args=method_args, selection=args.selection,
                       selection_args=selection_args)
    save_circuit(circuit, out)
    if args.html:
        circuit_html(circuit, args.html)
    meta = circuit.meta
    size = (f"{len(circuit.nodes)} of {circuit.graph.number_of_nodes()} layer nodes" if args.level == "layers" else f"{len(circuit.edges)} edges, {len(circuit.nodes)} nodes")
    print(f"{args.method} circuit on {task.name}: {size}; "
          f"faithfulness {meta['faithfulness']:.3f}, completeness {meta['completeness']:.3f} "
          f"({args.ablation} ablation), {meta['seconds']:.1f}s -> {out}")
    if args.selection != "top-k":
        consistent = f", {meta['n_consistent']} edges sign-consistent" if "n_consistent" in meta else ""
        print(f"selection {args.selection} {meta['selection_args']}{consistent}")
    if args.stability is not None:
        from circuitkit.circuit.stability import circuit_stability

        table = circuit_stability(model, task, args.method, n_runs=args.stability, ablation=args.ablation,
                                  method_args={**method_args, **({"steps": args.steps} if args.steps else {})},
                                  progress=not args.no_progress)
        a = table.attrs
        print(f"stability over {a['n_runs']} runs on {a['n_prompts']} of {len(task)} prompts each: top-{a['k']} "
              f"edges Jaccard {a['jaccard_mean']:.3f}, score Spearman {a['spearman_mean']:.3f} (mean over pairs)")
    chosen = min(args.top_k, len(circuit.all_edges)) if args.top_k is not None else 0
    if args.level == "edges" and len(circuit.edges) < chosen:
        print(f"note: of the top {chosen} edges, {chosen - len(circuit.edges)} lie on no input -> logits path "
              "of the others and were dropped (a circuit keeps only edges that can reach the logits)")
    return 0


def _cmd_export(args) -> int:
    from circuitkit.circuit.io import check_circuit_path, convert

    check_out_folder(args.out, inputs=[args.circuit])
    check_circuit_path(args.out, args.to)
    mib_options = {"sign": args.sign, "scores": args.scores, "dangling": args.dangling, "d_model": args.d_model}
    given = {key: value for key, value in mib_options.items() if value is not None}
    if given and args.to != "mib":
        flags = ", ".join("--" + key.replace("_", "-") for key in given)
        raise InputError(f"{flags} only apply to --to mib (EAP-IG / MIB JSON), not --to {args.to}; drop them")
    path = convert(args.circuit, args.out, args.to, args.src_format, **given)
    print(f"wrote {args.to} circuit to {path}")
    return 0


def _cmd_export_mib_submission(args) -> int:
    from circuitkit.circuit.io import check_mib_submission, load_circuit, mib_submission
    from circuitkit.cli.common import check_out_dir

    check_out_dir(args.out)
    path = mib_submission(load_circuit(args.circuit), args.out, task=args.mib_task, model=args.mib_model, mode=args.mode,
                          ranking=args.ranking)
    print(f"wrote MIB {args.mode} for {path.name} to {path}")
    entries = check_mib_submission(args.out)
    tasks, models = {e["task"] for e in entries}, {e["model"] for e in entries}
    print(f"{args.out} now holds {len(entries)} task / model folder(s): "
          + ", ".join(f"{Path(e['path']).name} ({e['mode']})" for e in entries))
    if len(tasks) < 2 or len(models) < 2:
        print("note: MIB's leaderboard takes a submission with at least 2 tasks and 2 models; add more folders")
    return 0
