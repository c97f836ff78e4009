"""``circuitkit sae train | report | card | circuit``."""

from __future__ import annotations

import json

from circuitkit.cli.common import (
    add_backend_argument,
    add_model_argument,
    add_task_arguments,
    check_out_dir,
    check_out_folder,
    finite_float,
    int_at_least,
    model_from_args,
    write_html,
)
from circuitkit.errors import InputError

COMMANDS = {"sae": "sparse autoencoders (SAELens): train, report, feature cards, feature circuits"}


def register(sub) -> None:
    from circuitkit import names
    from circuitkit.ablation.kinds import FEATURE_ABLATION_KINDS
    from circuitkit.circuit.features import ERROR_MODES, FEATURE_CIRCUIT_METHODS
    from circuitkit.sae.graph import POSITIONS
    from circuitkit.sae.train import ARCHITECTURES, DEFAULT_ARCHITECTURE, SAETrainConfig

    sae = sub.add_parser("sae", help=COMMANDS["sae"],
                         description="Train SAEs on any hook point (train), measure them (report) and explain "
                                     "their features (card). Feature attribution and discrete-SAE head circuits "
                                     "are in the Python API (circuitkit.sae).")
    ssub = sae.add_subparsers(dest="sae_command", metavar="SAE_COMMAND")
    ssub.required = True

    train = ssub.add_parser("train", help="train an SAE on a hook point and save it (SAELens format)",
                            description="Train an SAE with SAELens on MODEL's HOOK activations over a token "
                                        "set (default: the Python-docstring corpus) and save it to OUT.")
    train.add_argument("model", nargs="?", default="zoo:tiny-lm",
                       help="zoo:NAME, a TransformerLens model name, or a local Hugging Face directory")
    add_backend_argument(train)
    train.add_argument("--hook", default=names.hook("resid_pre", 1), help="hook point name")
    train.add_argument("--out", required=True, help="output directory (cfg.json + sae_weights.safetensors)")
    train.add_argument("--text", default=None, help="local UTF-8 text file to train on (default: Python docstrings)")
    train.add_argument("--arch", default=DEFAULT_ARCHITECTURE, choices=ARCHITECTURES,
                       help="SAE architecture (trained by SAELens's own class for it)")
    train.add_argument("--d-sae", type=int_at_least(1), default=None, help="latents (default 8 * width)")
    defaults = SAETrainConfig()
    train.add_argument("--l1", type=finite_float, default=defaults.l1_coefficient, help="L1 coefficient (standard)")
    train.add_argument("--k", type=int, default=defaults.k, help="active latents (topk)")
    train.add_argument("--l0", type=finite_float, default=defaults.l0_coefficient, help="L0 coefficient (jumprelu)")
    train.add_argument("--steps", type=int, default=defaults.steps, help="training steps")
    train.add_argument("--batch-tokens", type=int, default=defaults.batch_size_tokens,
                       help="activations (tokens) per training step (formerly --batch)")
    train.add_argument("--context", type=int_at_least(1), default=defaults.context_size, help="tokens per context window")
    train.add_argument("--lr", type=finite_float, default=defaults.lr, help="learning rate")
    train.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(func=_cmd_train)

    report = ssub.add_parser("report", help="quality report of a saved SAE",
                             description="Explained variance, L0, dead fraction and CE loss recovered of the SAE "
                                         "in SAE_DIR on MODEL, over held-out text.")
    _saved_sae_arguments(report, "evaluate on")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.set_defaults(func=_cmd_report)

    card = ssub.add_parser("card", help="a feature's top examples and output-token effects",
                           description="Print feature FEATURE's top-activating contexts and the tokens it boosts / "
                                       "suppresses through the unembedding; --html writes a standalone page.")
    _saved_sae_arguments(card, "search", feature=True)
    card.add_argument("--html", default=None, help="write the card as HTML to this file")
    card.set_defaults(func=_cmd_card)

    circ = ssub.add_parser("circuit", help="a feature circuit over several spliced SAEs / transcoders",
                           description="Splice the SAEs in SAE_DIR... into MODEL (error terms kept), estimate "
                                       "the feature graph of the task (nodes: features and error nodes at each "
                                       "position; edges: direct effects), keep the --top feature / error nodes "
                                       "and report the circuit's faithfulness with the rest mean-ablated.")
    add_model_argument(circ)
    circ.add_argument("sae_dirs", nargs="+", metavar="SAE_DIR",
                      help="folders of saved SAEs / transcoders (cfg.json + sae_weights.safetensors), or shipped "
                           "ones as zoo:NAME/HOOK (see `circuitkit zoo show NAME`)")
    add_task_arguments(circ, "the zoo card's task", n_prompts=16)
    circ.add_argument("--method", default="ig", choices=FEATURE_CIRCUIT_METHODS,
                      help="estimates: ig / attribution (Marks et al.), or linear: exact edges with a transcoder at "
                           "every MLP (circuit-tracer's construction; needs a logit_diff task)")
    circ.add_argument("--steps", type=int, default=8, help="integration steps (ig)")
    circ.add_argument("--baseline", default="mean", choices=FEATURE_ABLATION_KINDS,
                      help="the value an ablated node takes (mean: over the clean prompts at each position)")
    circ.add_argument("--positions", default="each", choices=POSITIONS,
                      help="one node per position, or summed over positions")
    circ.add_argument("--node-threshold", type=finite_float, default=1e-3, help="|estimate| a candidate node needs")
    circ.add_argument("--max-nodes", type=int_at_least(1), default=None, help="at most this many candidate features per site")
    circ.add_argument("--top", type=int_at_least(1), default=50, help="feature / error nodes kept in the circuit")
    circ.add_argument("--errors", default="circuit", choices=ERROR_MODES,
                      help="error nodes in evaluation: as the circuit says, all kept, or all ablated")
    circ.add_argument("--out", default=None, help="save the pruned circuit (.json node-link, .graphml, ...)")
    circ.add_argument("--html", default=None, help="write the circuit figure (token by token) as HTML; hovering a "
                      "feature shows its card: top activations and the tokens it promotes / suppresses")
    circ.add_argument("--card-text", default=None, help="UTF-8 text file the cards' top activations are searched in "
                      "(64-token windows; default: the task's clean prompts)")
    circ.add_argument("--card-examples", type=int_at_least(1), default=3, help="top activations per card (default 3)")
    circ.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    circ.set_defaults(func=_cmd_circuit)


def _saved_sae_arguments(parser, use: str, feature: bool = False) -> None:
    """MODEL, SAE_DIR (and FEATURE) and the held-out text a saved SAE is read on."""
    add_model_argument(parser)
    parser.add_argument("sae_dir", help="folder of a saved SAE (cfg.json + sae_weights.safetensors), or a shipped "
                        "one as zoo:NAME/HOOK (see `circuitkit zoo show NAME`)")
    if feature:
        parser.add_argument("feature", type=int, help="the feature (latent) index")
    parser.add_argument("--text", default=None, help=f"UTF-8 text file to {use} (default: held-out Python docstrings)")
    parser.add_argument("--n-prompts", type=int_at_least(1), default=128, help="number of context windows (formerly --prompts)")
    parser.add_argument("--context", type=int_at_least(1), default=64, help="tokens per context window")


def _check_context(model, context: int) -> None:
    """Before any text is tokenized: a context window the model cannot run fails inside torch."""
    n_ctx = model.cfg.n_ctx
    if context > n_ctx:
        raise InputError(f"--context {context} is longer than the model's n_ctx={n_ctx}; pass --context {n_ctx} "
                         "or less")


def _eval_tokens(model, text_path, n_prompts: int, context: int):

    from circuitkit.sae.train import text_to_tokens
    from circuitkit.tokenizers import python_docs_corpus, read_text_file

    _check_context(model, context)
    if text_path is not None:
        text = read_text_file(text_path)
    else:
        # The tail of the corpus beyond what `sae train` reads by default: held out.
        text = python_docs_corpus(1_200_000)[-400_000:]
    return text_to_tokens(model, text, context)[-n_prompts:]


def _cmd_train(args) -> int:
    import time

    from circuitkit.sae.train import SAETrainConfig, save_sae, train_sae
    from circuitkit.tokenizers import read_text_file

    if args.text is not None:
        read_text_file(args.text)  # a binary or missing file is refused before the model loads
    check_out_dir(args.out)  # a file there, or a read-only folder, is refused before training
    model = model_from_args(args, device="cpu")
    _check_context(model, args.context)
    start = time.perf_counter()
    config = SAETrainConfig(l1_coefficient=args.l1, k=args.k, l0_coefficient=args.l0, steps=args.steps,
                            batch_size_tokens=args.batch_tokens, context_size=args.context, lr=args.lr, seed=args.seed)
    sae = train_sae(model, args.hook, args.text, architecture=args.arch, d_sae=args.d_sae, config=config,
                    progress=not args.no_progress)
    path = save_sae(sae, args.out)
    print(f"trained {args.arch} SAE (d_in={sae.cfg.d_in}, d_sae={sae.cfg.d_sae}) on {args.hook} of {args.model} "
          f"in {time.perf_counter() - start:.0f} s; saved to {path}")
    return 0


def _cmd_report(args) -> int:
    from circuitkit.sae.quality import sae_quality
    from circuitkit.sae.train import load_sae

    model = model_from_args(args, device="cpu")
    sae = load_sae(args.sae_dir)
    quality = sae_quality(model, sae, _eval_tokens(model, args.text, args.n_prompts, args.context))
    if args.json:
        print(json.dumps(quality.to_frame().iloc[0].to_dict(), indent=2, default=str))
    else:
        print(quality.to_frame().T.to_string(header=False))
    return 0


def _cmd_card(args) -> int:
    from circuitkit.sae.features import feature_card
    from circuitkit.sae.train import load_sae

    check_out_folder(args.html)
    model = model_from_args(args, device="cpu")
    sae = load_sae(args.sae_dir)
    card = feature_card(model, sae, args.feature, _eval_tokens(model, args.text, args.n_prompts, args.context))
    print(f"{card.label}: density {card.density:.4f}, mean activation {card.mean_activation:.3f}")
    print("boosts:    " + ", ".join(repr(t) for t in card.boosted["token"]))
    print("suppresses:" + ", ".join(repr(t) for t in card.suppressed["token"]))
    for _, ex in card.examples.iterrows():
        context = "".join(f"[[{t}]]" if i == ex["center"] else t for i, t in enumerate(ex["context_tokens"]))
        print(f"  {ex['activation']:7.3f}  {context!r}")
    if args.html:
        from circuitkit.viz.sae import feature_card_html

        print(f"wrote {write_html(args.html, feature_card_html(card))}")
    return 0


def _cmd_circuit(args) -> int:
    from circuitkit.circuit import (
        evaluate_feature_circuit,
        feature_circuit,
        save_circuit,
        top_features,
    )
    from circuitkit.cli.common import task_from_args, write_figure
    from circuitkit.sae.cards import feature_cards
    from circuitkit.sae.graph import baseline_values
    from circuitkit.sae.splice import make_sites
    from circuitkit.sae.train import load_sae, text_to_tokens
    from circuitkit.tokenizers import read_text_file
    from circuitkit.viz import circuit_figure

    check_out_folder(args.out, args.html)
    if args.out:
        from circuitkit.circuit.io import check_circuit_path

        check_circuit_path(args.out)
    card_text = None
    if args.card_text is not None:
        if not args.html:
            raise InputError("--card-text sets where the hover cards of --html look; pass --html FILE too")
        card_text = read_text_file(args.card_text)  # a binary or missing file is refused before any work
    saes = [load_sae(d) for d in args.sae_dirs]
    model = model_from_args(args, device="cpu")
    sites = make_sites(model, saes)  # once, for every step below; a misfit SAE fails before the task is built
    task = task_from_args(args, model)
    base = baseline_values(model, sites, task, args.baseline)  # one baseline for finding and evaluating
    estimates = {} if args.method == "linear" else {"steps": args.steps, "baseline": base}
    circuit = feature_circuit(model, sites, task, method=args.method, positions=args.positions,
                              node_threshold=args.node_threshold, max_nodes=args.max_nodes,
                              progress=not args.no_progress, **estimates)
    small = top_features(circuit, args.top)
    ev = evaluate_feature_circuit(model, sites, task, small, errors=args.errors, baseline=base)
    share = "n/a" if ev.error_share is None else f"{ev.error_share:.3f}"
    print(f"feature circuit of {task.name} on {args.model}: {ev.n_features} features + {ev.n_errors} error nodes, "
          f"{len(small.edges)} edges; faithfulness {ev.faithfulness:.3f}, completeness {ev.completeness:.3f}, "
          f"error share {share} (errors {args.errors})")
    if ev.faithfulness < 0.5:
        print(f"note: {args.top} feature / error nodes reproduce little of the behaviour (faithfulness "
              f"{ev.faithfulness:.3f}); raise --top, or lower --n-prompts (each prompt position brings its own "
              "nodes)")
    nodes, _ = small.to_frames()
    nodes = nodes[nodes["in_graph"] & nodes["kind"].isin(["feature", "error"])]
    top = nodes.reindex(nodes["score"].abs().sort_values(ascending=False).index).head(15)
    print(top[["node", "kind", "score"]].to_string(index=False))
    if args.out:
        print(f"wrote {save_circuit(small, args.out)}")
    if args.html:
        corpus = task if card_text is None else text_to_tokens(model, card_text, 64)
        cards = feature_cards(model, sites, corpus, small.nodes, k=args.card_examples)
        print(f"wrote {write_figure(args.html, circuit_figure(small, cards=cards))}")
    return 0
