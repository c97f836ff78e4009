"""Study specs: what to ablate, in which models, on which tasks, measured how.

A spec is a YAML (``yaml.safe_load``) or TOML (``tomllib``) file, or the same data as a dict::

    models: [zoo:induction-handbuilt, zoo:ioi-trained, ./my-gpt2]   # a relative folder: relative to the spec file
    tasks:
      - {name: induction, params: {n_prompts: 16}}
      - {name: ioi, params: {n_prompts: 16, prepend_bos: false}, label: ioi16}    # label: optional, must be unique
      - {file: my_task.yaml}                                 # a task file (circuitkit.tasks.files), relative to the spec
    ablations: [zero, mean, resample]
    targets:
      every_head: true
      every_mlp: false
      head_sets: {name_movers: [a1.h0, a1.h2]}
      top_k_from: {score: induction, k: 3}                   # heads scored by TransformerLens' head_detector
    metrics: [logit_diff, accuracy]
    seeds: [0, 1]
    batch_size: 16                                           # prompts per forward pass (null = all)
    output_dir: results/head_ablation                        # relative to the spec file

`StudySpec.from_dict` checks shapes and names (unknown keys, types, values); `circuitkit.studies.checks.validate`
then checks the spec against each model (the model exists, each task builds with its tokenizer
and fits its vocabulary and context, every target head / MLP exists) and that the output
directory is writable — everything that can fail, before any unit runs.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from circuitkit import names
from circuitkit.ablation.kinds import NODE_ABLATION_KINDS as ABLATIONS
from circuitkit.errors import InputError
from circuitkit.heads.patterns import PATTERN_KINDS
from circuitkit.tasks.builders import BUILDERS, check_builder_params
from circuitkit.tasks.files import load_yaml, read_utf8
from circuitkit.tasks.metrics import METRICS
from circuitkit.tasks.task import TaskError

# top_k_from scores: circuitkit.heads' signatures on repeated random tokens (heads.patterns.PATTERN_KINDS)
HEAD_SCORES = PATTERN_KINDS

TOP_KEYS = ("models", "tasks", "ablations", "targets", "metrics", "seeds", "batch_size", "output_dir")
TASK_KEYS = ("name", "params", "label", "models", "file")
FILE_TASK_PARAMS = ("prepend_bos",)  # the parameters a task file takes from the spec
TARGET_KEYS = ("every_head", "every_mlp", "head_sets", "top_k_from")
TOP_K_KEYS = ("score", "k")


class SpecError(InputError):
    """A study spec is malformed or does not fit its models; the message names the key and the fix."""


@dataclass(frozen=True)
class TaskSpec:
    """A task builder (``circuitkit.tasks.BUILDERS``) and its parameters, or a task ``file`` (its
    ``name`` is then the file's stem); ``label`` names it in results."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    models: tuple[str, ...] = ()  # run only on these models (empty: every model in the spec)
    file: str = ""  # a task file (absolute path), instead of a builder

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)
        object.__setattr__(self, "models", tuple(self.models))

    def applies_to(self, model_spec: str) -> bool:
        return not self.models or model_spec in self.models


@dataclass(frozen=True)
class TopK:
    score: str
    k: int


@dataclass(frozen=True)
class Targets:
    every_head: bool = False
    every_mlp: bool = False
    head_sets: dict[str, list[str]] = field(default_factory=dict)
    top_k_from: TopK | None = None


@dataclass
class StudySpec:
    """A validated study: ``models x tasks x ablations x targets x seeds`` units."""

    models: list[str]
    tasks: list[TaskSpec]
    ablations: list[str]
    targets: Targets
    metrics: list[str] = field(default_factory=lambda: ["logit_diff"])
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int | None = None
    output_dir: Path = Path("study_results")
    # the spec file's folder: model folders and task files inside it are named relative to it in the
    # study's identity and results, so moving a study folder is not a change (not part of to_dict)
    base_dir: Path | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> StudySpec:
        """Read a ``.yaml`` / ``.yml`` / ``.toml`` spec; a relative ``output_dir`` is resolved
        against the spec file's folder."""
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"no study spec at {str(path)!r}; pass the path of a .yaml or .toml file")
        text = read_utf8(path, SpecError)
        if path.suffix.lower() == ".toml":
            import tomllib

            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise SpecError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = load_yaml(text, str(path), SpecError)  # a key given twice is refused, not overwritten
        else:
            raise SpecError(f"{path}: unknown spec format {path.suffix!r}; use a .yaml, .yml or .toml file")
        return cls.from_dict(data, base_dir=path.resolve().parent)

    @classmethod
    def from_dict(cls, data: Any, base_dir: str | os.PathLike | None = None) -> StudySpec:
        """Check a spec's structure, names and value types; ``SpecError`` names the key path and the fix."""
        if not isinstance(data, dict):
            raise SpecError(f"a study spec must be a mapping of {list(TOP_KEYS)}, got {type(data).__name__}")
        _check_keys(data, TOP_KEYS, "spec")
        for key in ("models", "tasks", "ablations", "targets"):
            if key not in data:
                raise SpecError(f"spec: missing required key {key!r}; see `circuitkit study run --help` for the format")
        models = [_resolve_model(m, base_dir) for m in _str_list(data["models"], "models")]
        tasks = _tasks(data["tasks"], base_dir)
        ablations = _str_list(data["ablations"], "ablations")
        for i, kind in enumerate(ablations):
            if kind not in ABLATIONS:
                raise SpecError(f"ablations[{i}]: unknown ablation kind {kind!r}{_hint(kind, ABLATIONS)}; "
                                f"choose from {list(ABLATIONS)}")
        targets = _targets(data["targets"])
        metrics = _str_list(data.get("metrics", ["logit_diff"]), "metrics")
        for i, metric in enumerate(metrics):
            if metric not in METRICS:
                raise SpecError(f"metrics[{i}]: unknown metric {metric!r}{_hint(metric, METRICS)}; "
                                f"choose from {sorted(METRICS)}")
        seeds = data.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
            raise SpecError(f"seeds: expected a non-empty list of integers, e.g. [0, 1], got {seeds!r}")
        too_big = [s for s in seeds if not -2**63 <= s < 2**63]
        if too_big:  # results store seeds as int64
            raise SpecError(f"seeds: {too_big[0]} does not fit a 64-bit integer (-2**63 .. 2**63 - 1); use a smaller seed")
        batch_size = data.get("batch_size")
        if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
            raise SpecError(f"batch_size: expected a positive integer or null (all prompts at once), got {batch_size!r}")
        out = data.get("output_dir", "study_results")
        if not isinstance(out, (str, os.PathLike)) or not str(out):
            raise SpecError(f"output_dir: expected a folder path string, got {out!r}")
        out_path = Path(out).expanduser()
        if not out_path.is_absolute() and base_dir is not None:
            out_path = Path(base_dir) / out_path
        for label, values in (("models", models), ("ablations", ablations), ("metrics", metrics), ("seeds", seeds)):
            if len(set(values)) != len(values):
                raise SpecError(f"{label}: repeated entries in {values}; list each once")
        return cls(models, tasks, ablations, targets, metrics, [int(s) for s in seeds], batch_size, out_path,
                   Path(base_dir).resolve() if base_dir is not None else None)

    # --- identity -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, accepted back by `from_dict`."""
        data = asdict(self)
        data["output_dir"] = str(self.output_dir)
        data.pop("base_dir")
        for task in data["tasks"]:  # omit the defaults (all models, no file) so older specs keep their hash
            if task["models"]:
                task["models"] = list(task["models"])
            else:
                task.pop("models")
            if not task["file"]:
                task.pop("file")
        if self.targets.top_k_from is None:
            data["targets"].pop("top_k_from")
        return data

    def hash(self) -> str:
        """Hash of everything that changes results (not ``output_dir``): a changed spec is refused.
        Model folders and task files inside the spec's folder count by their path relative to it
        (`relative`); what they hold is hashed by `circuitkit.studies.identity`."""
        data = self.to_dict()
        data.pop("output_dir")
        data["models"] = [self.relative(m) for m in data["models"]]
        for task in data["tasks"]:
            if "file" in task:
                task["file"] = self.relative(task["file"])
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def relative(self, path_or_name: str) -> str:
        """How results name a model folder or task file: ``./PATH`` relative to the spec's folder
        where it lies inside it, else as given (zoo and TransformerLens names, outside paths)."""
        if self.base_dir is None or not os.path.isabs(path_or_name):
            return path_or_name
        try:
            rel = Path(path_or_name).relative_to(self.base_dir)
        except ValueError:
            return path_or_name
        return "./" + rel.as_posix() if rel.parts else "."


# --- structural checks ------------------------------------------------------------------------

def _hint(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(data: dict, allowed, where: str) -> None:
    for key in data:
        if key not in allowed:
            raise SpecError(f"{where}: unknown key {key!r}{_hint(key, allowed)}; allowed keys are {list(allowed)}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _str_list(value, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{where}: expected a non-empty list of strings, got {value!r}")
    return list(value)


def _resolve_model(spec: str, base_dir) -> str:
    """A model written as a relative folder path is relative to the spec file's folder (like
    ``output_dir``); zoo names and TransformerLens names are kept as written."""
    if base_dir is None or os.path.isabs(os.path.expanduser(spec)):
        return spec
    candidate = Path(base_dir) / spec
    if candidate.is_dir() or os.sep in spec or spec.startswith("."):
        return str(candidate.resolve())
    return spec


def _tasks(value, base_dir=None) -> list[TaskSpec]:
    if not isinstance(value, list) or not value:
        raise SpecError(f"tasks: expected a non-empty list of {{name: BUILDER, params: {{...}}}}, got {value!r}")
    tasks = []
    for i, entry in enumerate(value):
        where = f"tasks[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise SpecError(f"{where}: expected a builder name or {{name: BUILDER, params: {{...}}}}, got {entry!r}")
        _check_keys(entry, TASK_KEYS, where)
        params = entry.get("params", {}) or {}
        if not isinstance(params, dict):
            raise SpecError(f"{where}.params: expected a mapping of builder arguments, got {params!r}")
        file = ""
        if "file" in entry:
            if "name" in entry:
                raise SpecError(f"{where}: give a builder 'name' or a task 'file', not both")
            file_path = Path(str(entry["file"])).expanduser()
            if not file_path.is_absolute() and base_dir is not None:
                file_path = Path(base_dir) / file_path
            if not file_path.is_file():
                raise SpecError(f"{where}.file: no task file at {str(file_path)!r} (relative paths are relative to "
                                "the spec file); give a .json / .yaml / .safetensors task file")
            for key in params:
                if key not in FILE_TASK_PARAMS:
                    raise SpecError(f"{where}.params: a task file takes only {list(FILE_TASK_PARAMS)} from the spec, "
                                    f"not {key!r}; write the rest into the file")
            file, name = str(file_path.resolve()), file_path.stem
        else:
            name = entry.get("name")
            if name not in BUILDERS:
                raise SpecError(f"{where}.name: unknown task {name!r}{_hint(name, BUILDERS)}; choose from "
                                f"{sorted(BUILDERS)}, or give a task file with 'file: my_task.yaml'")
            accepted = [p for p in inspect.signature(BUILDERS[name]).parameters if p != "model_or_tokenizer"]
            for key in params:
                if key not in accepted:
                    raise SpecError(f"{where}.params: task {name!r} takes no parameter {key!r}{_hint(key, accepted)}; "
                                    f"its parameters are {accepted}")
            n = params.get("n_prompts")
            if n is not None and (not _is_int(n) or n < 1):
                raise SpecError(f"{where}.params.n_prompts: expected a positive whole number of prompts, got {n!r}")
            try:  # each value fits its parameter's type and range (seq_len: ten is refused here)
                check_builder_params(name, {k: v for k, v in params.items() if k != "metric"})
            except TaskError as exc:
                raise SpecError(f"{where}.params: {exc}") from None
        if "metric" in params:
            raise SpecError(f"{where}.params.metric: set metrics with the top-level 'metrics' list instead")
        label = entry.get("label", name)
        if not isinstance(label, str) or not label:
            raise SpecError(f"{where}.label: expected a non-empty string, got {label!r}")
        models = _str_list(entry["models"], f"{where}.models") if "models" in entry else []
        tasks.append(TaskSpec(name, dict(params), label, tuple(models), file))
    labels = [t.label for t in tasks]
    for label in labels:
        if labels.count(label) > 1:
            raise SpecError(f"tasks: two entries are labelled {label!r}; give each a distinct 'label: ...'")
    return tasks


def _targets(value) -> Targets:
    if not isinstance(value, dict):
        raise SpecError(f"targets: expected a mapping with any of {list(TARGET_KEYS)}, got {value!r}")
    _check_keys(value, TARGET_KEYS, "targets")
    for key in ("every_head", "every_mlp"):
        if not isinstance(value.get(key, False), bool):
            raise SpecError(f"targets.{key}: expected true or false, got {value[key]!r}")
    head_sets = value.get("head_sets", {}) or {}
    if not isinstance(head_sets, dict):
        raise SpecError(f"targets.head_sets: expected a mapping {{set_name: [a1.h0, ...]}}, got {head_sets!r}")
    clean_sets: dict[str, list[str]] = {}
    for set_name, heads in head_sets.items():
        where = f"targets.head_sets.{set_name}"
        if not isinstance(heads, list) or not heads:
            raise SpecError(f"{where}: expected a non-empty list of components such as [a1.h0, m2], got {heads!r}")
        for j, comp in enumerate(heads):
            try:
                node = names.parse_node(comp) if isinstance(comp, str) else None
            except ValueError as exc:
                raise SpecError(f"{where}[{j}]: {exc}") from None
            if node is None or node.kind not in ("head", "mlp") or node.pos is not None:
                raise SpecError(f"{where}[{j}]: {comp!r} is not a head 'a<L>.h<H>' or MLP 'm<L>'; only those can be ablated")
        if names.is_valid_node(str(set_name)):
            raise SpecError(f"{where}: a set may not be named like a component; rename it (e.g. 'set_{set_name}')")
        clean_sets[str(set_name)] = list(heads)
    top = value.get("top_k_from")
    top_k = None
    if top is not None:
        if not isinstance(top, dict):
            raise SpecError(f"targets.top_k_from: expected {{score: {list(HEAD_SCORES)[0]}, k: 3}}, got {top!r}")
        _check_keys(top, TOP_K_KEYS, "targets.top_k_from")
        score = top.get("score")
        if score not in HEAD_SCORES:
            raise SpecError(f"targets.top_k_from.score: unknown head score {score!r}{_hint(score, HEAD_SCORES)}; "
                            f"choose from {list(HEAD_SCORES)}")
        k = top.get("k")
        if not _is_int(k) or k < 1:
            raise SpecError(f"targets.top_k_from.k: expected a positive integer, got {k!r}")
        top_k = TopK(score, k)
    targets = Targets(value.get("every_head", False), value.get("every_mlp", False), clean_sets, top_k)
    if not (targets.every_head or targets.every_mlp or targets.head_sets or targets.top_k_from):
        raise SpecError("targets: nothing to ablate; set every_head: true, every_mlp: true, head_sets or top_k_from")
    return targets
