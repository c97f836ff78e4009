"""``circuitkit zoo list | show NAME | train NAME | verify NAME | export NAME DIR``."""

from __future__ import annotations

import json

COMMANDS = {"zoo": "bundled models with known circuits"}


def register(sub) -> None:
    zoo = sub.add_parser("zoo", help=COMMANDS["zoo"],
                         description="List, inspect, train, verify and export the bundled zoo models.")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")
    zsub.required = True
    ls = zsub.add_parser("list", help="list the bundled models", description="List the bundled zoo models.")
    ls.set_defaults(func=_cmd_list)
    show = zsub.add_parser("show", help="print a model's card", description="Print a zoo model's card as JSON.")
    show.add_argument("name", help="the zoo model (see `circuitkit zoo list`)")
    show.set_defaults(func=_cmd_show)
    train = zsub.add_parser("train", help="rebuild a model from its recipe",
                            description="Rebuild zoo model NAME from its recipe (hand-built: by construction; "
                                        "trained: by training) and save weights, tokenizer and card, and the "
                                        "SAEs it ships with (saes/: analytic for induction-handbuilt, top-k "
                                        "training for tiny-lm) from their recipe.")
    train.add_argument("name", help="the zoo model to rebuild (see `circuitkit zoo list`)")
    train.add_argument("--seed", type=int, default=None, help="recipe seed (default: the shipped model's)")
    train.add_argument("--out", default=None, help="zoo folder to write NAME/ into (default: the user's zoo folder, "
                       "$CIRCUITKIT_HOME/zoo or ~/.local/share/circuitkit/zoo; a checkout's bundled models: data/zoo)")
    train.add_argument("--no-saes", action="store_true", help="write the model alone, without its saes/ folder")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(func=_cmd_train)
    verify = zsub.add_parser("verify", help="re-check a model's recorded circuit",
                             description="Mean-ablate everything outside NAME's recorded circuit, then the circuit "
                                         "itself, on the card's task; print the recovered shares and exit 1 unless "
                                         "circuit-only >= 0.9, circuit-ablated < 0.2 and accuracy matches the card.")
    verify.add_argument("name", help="the zoo model (see `circuitkit zoo list`)")
    verify.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    verify.add_argument("--json", action="store_true", help="print the figures as JSON")
    verify.set_defaults(func=_cmd_verify)
    export = zsub.add_parser(
        "export", help="write a model as a Hugging Face folder",
        description="Write zoo model NAME into DIR as a Hugging Face checkpoint (config.json, model.safetensors, "
                    "the zoo's tokenizer, circuitkit_zoo.json naming the model and its known circuit) that "
                    "transformers' AutoModelForCausalLM and `load_model(DIR, backend='bridge')` run with the zoo "
                    "model's logits: LayerNorm + learned positions as GPT2LMHeadModel, LayerNorm + rotary as "
                    "GPTNeoXForCausalLM (attention-only models get MLPs that output zero). Models without "
                    "LayerNorm (hand-built, tracr) are refused, naming why, before anything is written. "
                    "See docs/zoo.md.")
    export.add_argument("name", help="the zoo model (see `circuitkit zoo list`)")
    export.add_argument("dir", help="the folder to write; built beside it and moved into place in one rename")
    export.add_argument("--force", action="store_true",
                        help="replace DIR if it exists and is not empty (default: refuse)")
    export.set_defaults(func=_cmd_export)


def _cmd_list(args) -> int:
    from circuitkit.models.zoo_store import empty_zoo_reason, list_zoo

    cards = list_zoo()
    if not cards:
        print(empty_zoo_reason())
        return 0
    width = max(len(c.name) for c in cards)
    for card in cards:
        acc = f"acc={card.accuracy:.3f}" if card.accuracy is not None else ""
        saes = f"{len(card.saes)} SAEs" if card.saes else ""
        print(f"{card.name:{width}s}  {card.construction:10s}  {card.task['builder']:14s} {acc:10s} {saes:8s} "
              f"{card.description}")
    if any(card.saes for card in cards):  # a hint, on stderr: stdout stays one line per model
        import sys

        print("SAEs: `circuitkit zoo show NAME` lists them; pass one to `circuitkit sae ...` as zoo:NAME/HOOK",
              file=sys.stderr)
    return 0


def _cmd_show(args) -> int:
    from circuitkit.models.zoo_store import zoo_card

    card = zoo_card(args.name)
    shipped = {f"zoo:{card.name}/{hook}": str(folder) for hook, folder in card.saes.items()}
    print(json.dumps({**card.to_json(), "saes": shipped}, indent=2))
    return 0


def _cmd_train(args) -> int:
    from circuitkit.zoo.recipes import train

    path = train(args.name, root=args.out, seed=args.seed, progress=not args.no_progress, saes=not args.no_saes)
    print(f"wrote zoo model {args.name} to {path}")
    return 0


def _cmd_verify(args) -> int:
    from dataclasses import asdict

    from circuitkit.zoo.verification import verify

    report = verify(args.name, device=args.device)
    if args.json:
        print(json.dumps({**asdict(report), "passed": report.passed, "failures": report.failures}, indent=2))
    else:
        print(report.summary())
    return 0 if report.passed else 1


def _cmd_export(args) -> int:
    from circuitkit.models.hf_export import PROVENANCE_FILE, export_zoo_hf

    path = export_zoo_hf(args.name, args.dir, force=args.force)
    arch = json.loads((path / PROVENANCE_FILE).read_text())["architecture"]
    print(f"wrote zoo model {args.name} as a Hugging Face {arch} folder to {path}")
    return 0
