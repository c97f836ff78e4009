"""What several commands share: resolving a model's task, checking output folders, writing tables
and figures (through `circuitkit.atomic`, so nothing is left half-written)."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from circuitkit.atomic import write_with
from circuitkit.errors import InputError, MissingFileError

TASK_HELP = ("a task builder (ioi, induction, greater_than, multiple_choice, needle) or a task file "
             "(.json / .yaml with prompts and answers, .safetensors with token tensors; format: "
             "circuitkit.tasks.files)")


def add_model_argument(parser) -> None:
    """MODEL, the first positional argument of every command that runs a model, and ``--backend``."""
    parser.add_argument("model", help="zoo:NAME, a TransformerLens model name, or a local Hugging Face directory")
    add_backend_argument(parser)


def add_backend_argument(parser) -> None:
    """``--backend``: which TransformerLens model class `model_from_args` loads."""
    from circuitkit.models.loading import BACKEND_CHOICES

    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="TransformerLens model class: HookedTransformer ('hooked'), TransformerBridge around "
                             "the Hugging Face model ('bridge'), or 'auto': HookedTransformer where TransformerLens "
                             "converts the architecture, the bridge otherwise")


def model_from_args(args, device: str | None = None):
    """The model ``args.model`` names, on ``device`` (default: ``args.device``), through ``args.backend``."""
    from circuitkit.models.loading import load_model

    return load_model(args.model, device=device or getattr(args, "device", None) or "cpu",
                      backend=getattr(args, "backend", "auto"))


def add_task_arguments(parser, default_help: str, n_prompts: int | None = 16) -> None:
    """``--task NAME|FILE``, ``--task-arg KEY=VALUE`` (repeatable), ``--prepend-bos / --no-prepend-bos``
    and (when ``n_prompts`` is given) ``--n-prompts``: one spelling for every command."""
    parser.add_argument("--task", default=None, help=f"{TASK_HELP}; default: {default_help}")
    parser.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE", dest="task_args",
                        help="a builder parameter, repeatable; VALUE is read as YAML (safe_load): "
                             "--task-arg names='[Ann, Bob, Cid, Dan, Eve]' --task-arg seed=3")
    parser.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=None,
                        help="start each prompt with the tokenizer's BOS token (default: the builder's choice, "
                             "BOS first; a task file's own setting); --no-prepend-bos for BOS-less tokenizers")
    if n_prompts is not None:
        parser.add_argument("--n-prompts", type=int, default=None,
                            help=f"prompts to build (default: the zoo card's, else {n_prompts})")
        parser.set_defaults(n_prompts_default=n_prompts)


def parse_task_args(pairs: list[str]) -> dict:
    """``--task-arg`` pairs: `parse_key_values`."""
    return parse_key_values(pairs, "--task-arg", "n_prompts=32")


def parse_key_values(pairs: list[str], option: str, example: str) -> dict:
    """``["k=v", ...]`` -> ``{k: yaml.safe_load(v)}``; ``ValueError`` naming ``option`` and a
    malformed pair (or a value that contains itself: ``&a [*a]``)."""
    from circuitkit.tasks.files import load_yaml

    params: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError(f"{option} {pair!r}: expected KEY=VALUE, e.g. {option} {example}")
        if key in params:
            raise InputError(f"{option} {key!r} is given twice; give each parameter once")
        params[key] = load_yaml(value, f"{option} {pair!r} (quote a string value)") if value.strip() else ""
    return params


def task_from_args(args, model, *, default: str | None = None, **fixed):
    """The task a command runs, from ``--task`` (a builder or a task file), ``--task-arg``,
    ``--prepend-bos`` and ``--n-prompts``; ``fixed`` are parameters the command itself sets."""
    params = parse_task_args(getattr(args, "task_args", []))
    bos = getattr(args, "prepend_bos", None)
    task = args.task
    if task is not None and _looks_like_file(task):
        from circuitkit.tasks.files import load_task_file

        if params:
            raise InputError(f"--task-arg sets a builder's parameters, but --task {task!r} is a task file; "
                             "write the values into the file instead")
        return load_task_file(task, model, prepend_bos=bos)
    if bos is not None:
        params["prepend_bos"] = bos
    n = getattr(args, "n_prompts", None)
    if n is not None:
        if "n_prompts" in params:
            raise InputError("give the prompt count once: --n-prompts or --task-arg n_prompts=..., not both")
        params["n_prompts"] = n
    for key, value in fixed.items():
        if key in params:
            raise InputError(f"--task-arg {key!r}: this command sets {key} itself (to {value!r}); drop it")
        params[key] = value
    return resolve_task(args.model, model, task, default=default,
                        n_prompts_default=getattr(args, "n_prompts_default", None), **params)


def _looks_like_file(task: str) -> bool:
    from circuitkit.tasks.files import is_task_file

    if is_task_file(task):
        return True
    if Path(task).exists():
        raise InputError(f"--task {task!r} is a file without a task-file suffix; name it .json, .yaml, .yml "
                         "or .safetensors (pickles are never read)")
    return False


def resolve_task(model_spec: str, model, task_name: str | None, *, default: str | None = None,
                 n_prompts_default: int | None = None, **params):
    """The task a command runs: a zoo model's own card task (when ``task_name`` is None or names the
    card's builder), else the named builder (``default`` when none is named) with the model's tokenizer."""
    from circuitkit.models.loading import parse_spec
    from circuitkit.models.zoo_store import zoo_card, zoo_task
    from circuitkit.tasks.builders import build_task, builder_parameters

    zoo = parse_spec(model_spec).zoo_name
    if zoo is not None:
        card = zoo_card(zoo)
        if task_name is None or task_name == card.task["builder"]:
            return zoo_task(card, model, **params)
    name = task_name or default
    if name is None:
        raise InputError("--task is required for models outside the zoo (e.g. --task ioi, or --task my_task.yaml)")
    if n_prompts_default is not None and "n_prompts" not in params and "n_prompts" in builder_parameters(name):
        params["n_prompts"] = n_prompts_default
    return build_task(name, model, **params)


def finite_float(text: str) -> float:
    """argparse ``type=`` of every float option: a number that is not NaN or infinite (``float``
    accepts 'nan' and 'inf', which no threshold, rate or coefficient can be)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(minimum: int):
    """argparse ``type=`` for a count: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int>={minimum}"
    return parse


def check_out_folder(*paths: str | Path | None, make_parents: bool = False, inputs=()) -> None:
    """Before any work, for each output file: its folder exists (with ``make_parents``: can be
    made) and is writable, and the path is neither an existing folder nor one of ``inputs``."""
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise InputError(f"output {path} is a folder; give the path of a file to write, not a folder")
        for source in inputs:
            if path.exists() and Path(source).exists() and os.path.samefile(path, source):
                raise InputError(f"output {path} is the input file {source}; write to another file")
        _check_writable(path.parent, path, make_parents)


def check_out_dir(path: str | Path | None) -> None:
    """Before any work, for an output folder (made if missing): it is not a file, and it (or the
    nearest folder above it) is writable."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"output {path} is a file; give a folder path (the output is a folder of files)")
    _check_writable(path if path.exists() else path.parent, path, make_parents=True)


def _check_writable(folder: Path, path: Path, make_parents: bool) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot write {path}: {existing} is a file, not a folder; choose an output inside a folder")
    if existing != folder and not make_parents:
        raise MissingFileError(f"output folder {folder} does not exist; create it first")
    if not os.access(existing, os.W_OK):
        raise InputError(f"cannot write {path}: folder {existing} is not writable; choose another folder")


def write_table(path: str | Path, frame, make_parents: bool = False) -> Path:
    """A pandas table as ``.parquet`` (by suffix) or CSV, written atomically."""
    path = Path(path)
    if path.suffix == ".parquet":
        return write_with(path, lambda p: frame.to_parquet(p, index=False), make_parents=make_parents)
    return write_with(path, lambda p: frame.to_csv(p, index=False), make_parents=make_parents)


def write_figure(path: str | Path, fig, make_parents: bool = False) -> Path:
    """A Plotly figure as a self-contained page that opens offline (`circuitkit.viz.page`)."""
    from circuitkit.viz.page import write_figure_html

    return write_figure_html(path, fig, make_parents=make_parents)


def write_html(path: str | Path, body: str) -> Path:
    """An HTML fragment as a standalone page (`circuitkit.viz.page`)."""
    from circuitkit.viz.page import write_page

    return write_page(path, body)


