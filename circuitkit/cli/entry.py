"""``circuitkit`` command line: a thin layer over the public API.

Each command lives in its own module of ``circuitkit.cli`` with a ``COMMANDS`` table (name ->
one-line help) and a ``register(subparsers)`` function. Only the invoked command's module
registers its full parser (importing what its choices need); the others appear as one-line
entries, so ``circuitkit --help`` and light commands import no torch / TransformerLens / SAELens /
Plotly. Handlers import what a command runs inside themselves, for the same reason.
``circuitkit.cli.common`` holds what several commands share.

Grammar: MODEL is the first positional argument of every command that runs a model; prompts are
``--n-prompts``, rows per forward pass ``--batch-size``, progress bars are hidden by
``--no-progress``; every option's default is shown in ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from circuitkit.cli.common import add_model_argument, model_from_args
from circuitkit.errors import CircuitkitError
from circuitkit.version import __version__

COMMAND_MODULES = (
    "circuitkit.cli.zoo",
    "circuitkit.cli.patch",
    "circuitkit.cli.heads",
    "circuitkit.cli.sae",
    "circuitkit.cli.circuit",
    "circuitkit.cli.study",
)

INFO_HELP = "print a model's configuration and hook names"

# Old spellings still accepted for a while: (command, old option) -> new option; None: MODEL positional.
DEPRECATED = {
    ("discover", "--model"): None,
    ("discover", "--target"): "--faithfulness",
    ("discover", "--quiet"): "--no-progress",
    ("patch", "--target"): "--component",
    ("sae", "--prompts"): "--n-prompts",
    ("sae", "--batch"): "--batch-tokens",
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (flags, None)."""

    def _get_help_string(self, action):
        text = action.help or ""
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if flag or action.default in (None, False, [], argparse.SUPPRESS) or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)".strip()


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser, or (given ``argv``) one where only the invoked command is fully built."""
    parser = argparse.ArgumentParser(
        prog="circuitkit", formatter_class=_HelpFormatter,
        description="Mechanistic interpretability with circuit discovery (TransformerLens models).",
    )
    parser.add_argument("--version", action="version", version=f"circuitkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    command = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None

    if argv is None or command == "info":
        info = sub.add_parser("info", help=INFO_HELP, formatter_class=_HelpFormatter,
                              description="Load MODEL (zoo:NAME, a TransformerLens name or a local HF directory) "
                                          "and print its configuration and hook names.")
        add_model_argument(info)
        info.add_argument("--json", action="store_true", help="print JSON instead of text")
        info.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
        info.set_defaults(func=_cmd_info)
    else:
        sub.add_parser("info", help=INFO_HELP)

    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        if argv is None or command in module.COMMANDS:
            module.register(sub)
        else:
            for name, help_text in module.COMMANDS.items():
                sub.add_parser(name, help=help_text)
    _show_defaults(parser)
    return parser


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if not action.help and action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            action.help = "(default: %(default)s)"  # argparse prints no help line for an option without help
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)


def _rewrite_deprecated(argv: list[str]) -> list[str]:
    """Old option spellings -> new ones, each with a one-line notice on stderr."""
    command = next((a for a in argv if not a.startswith("-")), None)
    out: list[str] = []
    model_first: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        key = (command, name)
        if key in DEPRECATED:
            new = DEPRECATED[key]
            if new is None:  # --model M -> positional M after the command
                value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
                i += 1 if "=" in arg else 2
                model_first.append(value)
                print(f"circuitkit {command}: --model is deprecated; give MODEL first: circuitkit {command} MODEL ...",
                      file=sys.stderr)
                continue
            print(f"circuitkit {command}: {name} is deprecated; use {new}", file=sys.stderr)
            arg = new + arg[len(name):]
        out.append(arg)
        i += 1
    if model_first:
        at = out.index(command) + 1
        out[at:at] = model_first
    return out


def _cmd_info(args) -> int:
    from circuitkit.models import backend

    model = model_from_args(args)
    cfg = model.cfg
    fields = ("model_name", "n_layers", "n_heads", "d_model", "d_head", "d_mlp", "d_vocab", "d_vocab_out", "n_ctx",
              "act_fn", "normalization_type", "positional_embedding_type", "attn_only", "n_key_value_heads")
    config = {f: getattr(cfg, f, None) for f in fields}
    config.update(architecture=backend.architecture(model), backend=backend.backend(model))
    # what this model's hooks cannot be used for (a bridge's are measured; see docs/models.md)
    problems = backend.audit(model).problems
    hooks = list(model.hook_dict)
    if args.json:
        print(json.dumps({"config": config, "unsupported": problems, "hooks": hooks}, indent=2, default=str))
        return 0
    print(f"model {cfg.model_name}")
    for key, value in config.items():
        if value is not None:
            print(f"  {key:28s} {value}")
    for need, why in problems.items():
        print(f"  not available: {need:14s} {why}")
    print(f"hook points ({len(hooks)}):")
    for name in hooks:
        print(f"  {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = _rewrite_deprecated(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CircuitkitError as exc:  # a problem circuitkit named: one line; anything else is a bug
        print(f"circuitkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused (permissions, a full disk, a folder where a file goes)
        where = f" {exc.filename}" if exc.filename else ""
        print(f"circuitkit {args.command}: error: cannot use{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
