"""Checks of a study spec against its models, tasks and output folder: everything that can fail,
before any unit runs (`validate`)."""

from __future__ import annotations

import inspect
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitkit import names
from circuitkit.models.loading import load_model, parse_spec
from circuitkit.models.zoo_store import WEIGHTS_FILE, zoo_card, zoo_tokenizer
from circuitkit.studies.spec import SpecError, StudySpec, TaskSpec
from circuitkit.tasks.builders import BUILDERS, build_task
from circuitkit.tasks.files import load_task_file


@dataclass
class ModelInfo:
    """What planning needs from a model, read without its weights where possible."""

    spec: str
    n_layers: int
    n_heads: int
    attn_only: bool
    d_vocab: int
    n_ctx: int
    tokenizer: Any
    d_model: int = 0
    d_head: int = 0
    d_mlp: int = 0
    weight_bytes: int = 0  # the weights' size in memory (zoo: their file's size)
    memory_bytes: int = 0  # `validate`: the estimated memory a runner holds for this model's units


def model_info(model_spec: str) -> ModelInfo:
    """A zoo model's card config and tokenizer (no weights); other models are loaded."""
    zoo = parse_spec(model_spec).zoo_name
    if zoo is not None:
        card = zoo_card(zoo)
        cfg = card.config
        d_mlp = cfg.get("d_mlp")
        weights = card.path / WEIGHTS_FILE
        return ModelInfo(model_spec, int(cfg["n_layers"]), int(cfg["n_heads"]),
                         bool(cfg.get("attn_only", False)) or d_mlp in (None, 0),
                         int(cfg["d_vocab"]), int(cfg["n_ctx"]), zoo_tokenizer(card),
                         int(cfg.get("d_model") or 0), int(cfg.get("d_head") or 0), int(d_mlp or 0),
                         weights.stat().st_size if weights.is_file() else 0)
    model = load_model(model_spec, device="cpu")
    cfg = model.cfg
    return ModelInfo(model_spec, cfg.n_layers, cfg.n_heads, bool(cfg.attn_only), cfg.d_vocab, cfg.n_ctx, model.tokenizer,
                     int(cfg.d_model), int(cfg.d_head), int(cfg.d_mlp or 0),
                     sum(p.numel() * p.element_size() for p in model.parameters()))


# --- memory -------------------------------------------------------------------------------------

FLOAT_BYTES = 4  # activations are float32
WORKER_BASE_BYTES = 480 * 2**20  # a worker process with torch and TransformerLens imported (measured RSS)


def machine_memory() -> int:
    """Physical memory, or the container's limit (cgroup v2 ``memory.max``) where lower; 0 if unknown."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 0
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit() and (not total or int(limit) < total):
            total = int(limit)
    except OSError:
        pass
    return total


def gigabytes(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.1f} GB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:,.0f} MB"


def task_memory(info: ModelInfo, n_prompts: int, seq: int, batch_size: int | None,
                ablations: list[str]) -> tuple[int, int]:
    """Estimated bytes a runner keeps for one (model, task, seed) — its clean run's cache of every
    layer over all prompts, the zero / resample values read instead and the baseline logits — and
    the bytes of its largest forward pass (``max(prompts, batch_size)`` rows: logits, attention
    patterns, residual stream and MLP activations)."""
    width = info.n_heads * info.d_head or info.d_model
    per_token = info.d_model + width + (0 if info.attn_only else info.d_model)  # resid_pre, z, mlp_out
    cache = n_prompts * seq * info.n_layers * per_token + 2 * n_prompts * seq * width  # + last layer's keys, values
    copies = sum(kind != "mean" for kind in set(ablations))  # the values each kind reads (a view of the mean)
    values = copies * n_prompts * seq * info.n_layers * (width + (0 if info.attn_only else info.d_model))
    kept = (cache + values + 2 * n_prompts * info.d_vocab) * FLOAT_BYTES
    rows = max(n_prompts, batch_size or n_prompts)
    per_row = info.d_vocab + 2 * info.n_heads * seq + 6 * info.d_model + 2 * info.d_mlp
    return kept, rows * seq * per_row * FLOAT_BYTES


def build_unit_task(task_spec: TaskSpec, tokenizer, seed: int, metric: str = "logit_diff"):
    """The task for one seed: the spec's seed feeds the builder unless its params fix one (a task
    file is the same for every seed)."""
    if task_spec.file:
        return load_task_file(task_spec.file, tokenizer, prepend_bos=task_spec.params.get("prepend_bos"), metric=metric)
    params = dict(task_spec.params)
    if "seed" in inspect.signature(BUILDERS[task_spec.name]).parameters and "seed" not in params:
        params["seed"] = seed
    return build_task(task_spec.name, tokenizer, **params, metric=metric)


def validate(spec: StudySpec) -> dict[str, ModelInfo]:
    """Check ``spec`` against its models and output folder; raise ``SpecError`` before any unit runs.

    Loads each model's config (zoo: card only), builds each task with its tokenizer for every
    seed, checks vocabulary / context, target components and ``top_k_from.k`` ranges.
    """
    infos: dict[str, ModelInfo] = {}
    for j, task_spec in enumerate(spec.tasks):
        unknown = [m for m in task_spec.models if m not in spec.models]
        if unknown:
            raise SpecError(f"tasks[{j}].models: {unknown} are not in the spec's models {spec.models}; "
                            "list each model in 'models' first")
    for i, model_spec in enumerate(spec.models):
        try:
            infos[model_spec] = info = model_info(model_spec)
        except (KeyError, ValueError, RuntimeError, OSError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise SpecError(f"models[{i}]: cannot load {model_spec!r}: {message}") from None
        where = f"model {model_spec!r} ({info.n_layers} layers x {info.n_heads} heads"
        where += ", attention-only)" if info.attn_only else ")"
        if spec.targets.every_mlp and info.attn_only:
            raise SpecError(f"targets.every_mlp: {where} has no MLPs; drop every_mlp or this model")
        for set_name, comps in spec.targets.head_sets.items():
            for comp in comps:
                try:
                    node = names.check_in_model(comp, info.n_layers, info.n_heads, not info.attn_only)
                except ValueError:
                    node = names.parse_node(comp)
                    if node.kind == "head":
                        raise SpecError(f"targets.head_sets.{set_name}: head {comp!r} is out of range for {where}; "
                                        f"use a0.h0 .. {names.head(info.n_layers - 1, info.n_heads - 1)}") from None
                    raise SpecError(f"targets.head_sets.{set_name}: MLP {comp!r} does not exist in {where}") from None
        top = spec.targets.top_k_from
        if top is not None and top.k > info.n_layers * info.n_heads:
            raise SpecError(f"targets.top_k_from.k: {top.k} exceeds the {info.n_layers * info.n_heads} heads of {where}")
        kept, largest = 0, (0, "")
        for j, task_spec in enumerate(spec.tasks):
            if not task_spec.applies_to(model_spec):
                continue
            for seed in spec.seeds:
                try:
                    task = build_unit_task(task_spec, info.tokenizer, seed)
                except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
                    raise SpecError(f"tasks[{j}] ({task_spec.label}): cannot build for {where}, seed {seed}: {exc}") from None
                _check_task_fits(task, info, f"tasks[{j}] ({task_spec.label})", where)
                if "resample" in spec.ablations and len(task) < 2:
                    raise SpecError(f"tasks[{j}] ({task_spec.label}): resample ablation needs at least 2 prompts; "
                                    "raise params.n_prompts")
                seq = task.clean.shape[1]
                task_kept, one_pass = task_memory(info, len(task), seq, spec.batch_size, spec.ablations)
                kept += task_kept
                if one_pass >= largest[0]:
                    largest = (one_pass, f"tasks[{j}] ({task_spec.label}): {len(task):,} prompts of {seq} tokens")
        info.memory_bytes = info.weight_bytes + kept + largest[0]
        _check_memory(info, kept, largest, where)
    check_output_dir(spec.output_dir)
    return infos


def _check_memory(info: ModelInfo, kept: int, largest: tuple[int, str], where: str) -> None:
    """Refuse a study whose units cannot fit this machine's memory, before any unit runs."""
    available = machine_memory()
    if not available or info.memory_bytes <= available:
        return
    raise SpecError(
        f"{where}: its units need about {gigabytes(info.memory_bytes)} of memory at once, more than the "
        f"{gigabytes(available)} this machine has (weights {gigabytes(info.weight_bytes)}, the clean runs' caches "
        f"of every task and seed {gigabytes(kept)}, the largest forward pass {gigabytes(largest[0])}, for "
        f"{largest[1]}); lower params.n_prompts, set a smaller batch_size (prompts per pass), or split the study")


def _check_task_fits(task, info: ModelInfo, what: str, where: str) -> None:
    if task.d_vocab is not None and task.d_vocab != info.d_vocab:
        raise SpecError(f"{what}: built with a vocabulary of {task.d_vocab} tokens but {where} has {info.d_vocab}; "
                        "the model's tokenizer and embedding disagree")
    if task.clean.shape[1] > info.n_ctx:
        raise SpecError(f"{what}: prompts of {task.clean.shape[1]} tokens exceed the context ({info.n_ctx}) of {where}; "
                        "use shorter prompts")


def check_output_dir(path: Path) -> None:
    """The folder exists (or can be created) and is readable and writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SpecError(f"output_dir: {str(path)!r} is a file, not a folder; choose another output_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError(f"output_dir: cannot create {str(path)!r} ({exc.strerror}); choose a writable output_dir") from None
    if not os.access(path, os.R_OK | os.X_OK):
        raise SpecError(f"output_dir: {str(path)!r} is not readable; fix its permissions or choose another output_dir")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise SpecError(f"output_dir: {str(path)!r} is not writable ({exc.strerror}); fix its permissions "
                        "or choose another output_dir") from None
