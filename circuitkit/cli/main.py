"""``circuitkit`` command line: a thin layer over the public API.

Each command lives in its own module of ``circuitkit.cli`` with a ``register(subparsers)``
function, so this file stays small. The command modules import what a command runs (methods,
model loading, figures) inside its handler, on purpose: each command pays only for what it uses.
``circuitkit.cli.common`` holds what several commands share.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from circuitkit.version import __version__

COMMAND_MODULES = (
    "circuitkit.cli.zoo",
    "circuitkit.cli.patch",
    "circuitkit.cli.heads",
    "circuitkit.cli.sae",
    "circuitkit.cli.circuit",
    "circuitkit.cli.study",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="circuitkit",
        description="Mechanistic interpretability with circuit discovery (TransformerLens models).",
    )
    parser.add_argument("--version", action="version", version=f"circuitkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser("info", help="print a model's configuration and hook names",
                          description="Load MODEL (zoo:NAME, a TransformerLens name or a local HF directory) "
                                      "and print its configuration and hook names.")
    info.add_argument("model", help="zoo:NAME, a TransformerLens model name, or a local Hugging Face directory")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.add_argument("--device", default="cpu")
    info.set_defaults(func=_cmd_info)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def _cmd_info(args) -> int:
    from circuitkit import load_model

    model = load_model(args.model, device=args.device)
    cfg = model.cfg
    fields = ("model_name", "n_layers", "n_heads", "d_model", "d_head", "d_mlp", "d_vocab", "n_ctx", "act_fn",
              "normalization_type", "positional_embedding_type", "attn_only", "n_key_value_heads", "original_architecture")
    config = {f: getattr(cfg, f, None) for f in fields}
    hooks = list(model.hook_dict)
    if args.json:
        print(json.dumps({"config": config, "hooks": hooks}, indent=2, default=str))
        return 0
    print(f"model {cfg.model_name}")
    for key, value in config.items():
        if value is not None:
            print(f"  {key:28s} {value}")
    print(f"hook points ({len(hooks)}):")
    for name in hooks:
        print(f"  {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
        # Expected user errors: one clear line, no traceback.
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"circuitkit {args.command}: error: {message}", file=sys.stderr)
        return 2


