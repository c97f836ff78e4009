"""``circuitkit sae train | report | card``."""

from __future__ import annotations

import json

from circuitkit.cli.common import add_model_argument, write_html

COMMANDS = {"sae": "sparse autoencoders (SAELens): train, report, feature cards"}


def register(sub) -> None:
    from circuitkit import names
    from circuitkit.sae.train import SAETrainConfig

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
    train.add_argument("--hook", default=names.hook("resid_pre", 1), help="hook point name")
    train.add_argument("--out", required=True, help="output directory (cfg.json + sae_weights.safetensors)")
    train.add_argument("--text", default=None, help="local UTF-8 text file to train on (default: Python docstrings)")
    train.add_argument("--arch", default="topk", choices=["standard", "topk", "jumprelu"], help="SAE architecture")
    train.add_argument("--d-sae", type=int, default=None, help="latents (default 8 * width)")
    defaults = SAETrainConfig()
    train.add_argument("--l1", type=float, default=defaults.l1_coefficient, help="L1 coefficient (standard)")
    train.add_argument("--k", type=int, default=defaults.k, help="active latents (topk)")
    train.add_argument("--l0", type=float, default=defaults.l0_coefficient, help="L0 coefficient (jumprelu)")
    train.add_argument("--steps", type=int, default=defaults.steps, help="training steps")
    train.add_argument("--batch-tokens", type=int, default=defaults.batch_size_tokens,
                       help="activations (tokens) per training step (formerly --batch)")
    train.add_argument("--context", type=int, default=defaults.context_size, help="tokens per context window")
    train.add_argument("--lr", type=float, default=defaults.lr, help="learning rate")
    train.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(func=_cmd_train)

    report = ssub.add_parser("report", help="quality report of a saved SAE",
                             description="Explained variance, L0, dead fraction and CE loss recovered of the SAE "
                                         "in SAE_DIR on MODEL, over held-out text.")
    _saved_sae_arguments(report, "evaluate on")
    report.add_argument("--json", action="store_true")
    report.set_defaults(func=_cmd_report)

    card = ssub.add_parser("card", help="a feature's top examples and output-token effects",
                           description="Print feature FEATURE's top-activating contexts and the tokens it boosts / "
                                       "suppresses through the unembedding; --html writes a standalone page.")
    _saved_sae_arguments(card, "search", feature=True)
    card.add_argument("--html", default=None, help="write the card as HTML to this file")
    card.set_defaults(func=_cmd_card)


def _saved_sae_arguments(parser, use: str, feature: bool = False) -> None:
    """MODEL, SAE_DIR (and FEATURE) and the held-out text a saved SAE is read on."""
    add_model_argument(parser)
    parser.add_argument("sae_dir", help="folder of a saved SAE (cfg.json + sae_weights.safetensors)")
    if feature:
        parser.add_argument("feature", type=int, help="the feature (latent) index")
    parser.add_argument("--text", default=None, help=f"UTF-8 text file to {use} (default: held-out Python docstrings)")
    parser.add_argument("--n-prompts", type=int, default=128, help="number of context windows (formerly --prompts)")
    parser.add_argument("--context", type=int, default=64, help="tokens per context window")


def _eval_tokens(model, text_path, n_prompts: int, context: int):

    from circuitkit.sae.train import text_to_tokens
    from circuitkit.tokenizers import python_docs_corpus, read_text_file

    if text_path is not None:
        text = read_text_file(text_path)
    else:
        # The tail of the corpus beyond what `sae train` reads by default: held out.
        text = python_docs_corpus(1_200_000)[-400_000:]
    return text_to_tokens(model, text, context)[-n_prompts:]


def _cmd_train(args) -> int:
    import time

    from circuitkit.models.loading import load_model
    from circuitkit.sae.train import SAETrainConfig, save_sae, train_sae
    from circuitkit.tokenizers import read_text_file

    if args.text is not None:
        read_text_file(args.text)  # a binary or missing file is refused before the model loads
    model = load_model(args.model, device="cpu")
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
    from circuitkit.models.loading import load_model
    from circuitkit.sae.quality import sae_quality
    from circuitkit.sae.train import load_sae

    model = load_model(args.model, device="cpu")
    sae = load_sae(args.sae_dir)
    quality = sae_quality(model, sae, _eval_tokens(model, args.text, args.n_prompts, args.context))
    if args.json:
        print(json.dumps(quality.to_frame().iloc[0].to_dict(), indent=2, default=str))
    else:
        print(quality.to_frame().T.to_string(header=False))
    return 0


def _cmd_card(args) -> int:
    from circuitkit.models.loading import load_model
    from circuitkit.sae.features import feature_card
    from circuitkit.sae.train import load_sae

    model = load_model(args.model, device="cpu")
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
