"""Plan a study into units and run them, resumably.

A unit is one ``(model, task, ablation, target, seed)``. Its row holds each metric with the
target ablated, the clean and corrupted baselines (computed once per model / task / seed and
cached) and the share of behaviour kept (``recovered``). Executors (``serial``, ``process``,
``ray``) only decide where :class:`UnitRunner` runs; the numbers are the same.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from circuitkit import names
from circuitkit.studies import store
from circuitkit.studies.spec import HEAD_SCORES, SpecError, StudySpec, build_unit_task, validate


@dataclass(frozen=True)
class Unit:
    """One row of the results table. ``components`` is empty for ``top_k`` targets, which are
    resolved from the model's head scores where the unit runs."""

    model: str
    task: str  # the task's label
    ablation: str
    target: str  # a component id, a head-set name, or "top<k>:<score>"
    target_kind: str  # "head" | "mlp" | "head_set" | "top_k"
    components: tuple[str, ...]
    seed: int

    @property
    def key(self) -> tuple[str, str, str, str, int]:
        return (self.model, self.task, self.ablation, self.target, self.seed)


def plan_units(spec: StudySpec, infos: dict) -> list[Unit]:
    """Every unit, grouped by model then task and seed (so baselines and models are reused)."""
    units = []
    for model_spec in spec.models:
        info = infos[model_spec]
        targets: list[tuple[str, str, tuple[str, ...]]] = []
        if spec.targets.every_head:
            targets += [(h, "head", (h,)) for h in
                        (names.head(layer, i) for layer in range(info.n_layers) for i in range(info.n_heads))]
        if spec.targets.every_mlp:
            targets += [(names.mlp(layer), "mlp", (names.mlp(layer),)) for layer in range(info.n_layers)]
        targets += [(set_name, "head_set", tuple(comps)) for set_name, comps in spec.targets.head_sets.items()]
        if spec.targets.top_k_from is not None:
            top = spec.targets.top_k_from
            targets.append((f"top{top.k}:{top.score}", "top_k", ()))
        for task_spec in spec.tasks:
            if not task_spec.applies_to(model_spec):
                continue
            for seed in spec.seeds:
                for kind in spec.ablations:
                    units += [Unit(model_spec, task_spec.label, kind, target, target_kind, comps, seed)
                              for target, target_kind, comps in targets]
    return units


@dataclass
class _Baseline:
    task: Any
    clean_final: Tensor  # [batch, vocab] logits at the answer positions
    values: dict[str, tuple[float, float]]  # metric -> (clean, corrupted)


class UnitRunner:
    """Runs units of one spec, keeping loaded models, tasks and baselines between units."""

    def __init__(self, spec: StudySpec, device: str = "cpu"):
        self.spec = spec
        self.device = device
        self._tasks = {t.label: t for t in spec.tasks}
        self._models: dict[str, Any] = {}
        self._baselines: dict[tuple[str, str, int], _Baseline] = {}
        self._top_k: dict[str, tuple[str, ...]] = {}

    def model(self, model_spec: str):
        if model_spec not in self._models:
            from circuitkit.models.loading import load_model

            model = load_model(model_spec, device=self.device)
            model.eval()
            self._models[model_spec] = model
        return self._models[model_spec]

    # --- evaluation ---------------------------------------------------------------------------
    def _final_logits(self, model, task, hooks_for_chunk) -> Tensor:
        """Answer-position logits ``[batch, vocab]``, in chunks of ``batch_size`` prompts."""
        n = len(task)
        size = self.spec.batch_size or n
        out = []
        with torch.no_grad():
            for start in range(0, n, size):
                stop = min(n, start + size)
                hooks = hooks_for_chunk(start, stop)
                logits = model.run_with_hooks(task.clean[start:stop], fwd_hooks=hooks)
                out.append(logits[torch.arange(stop - start), task.answer_pos[start:stop]])
        return torch.cat(out)

    def _scores(self, task, final: Tensor, clean_final: Tensor) -> dict[str, float]:
        from circuitkit.tasks.metrics import make_kl_metric

        values = {}
        for metric in self.spec.metrics:
            fn = make_kl_metric(clean_final) if metric == "kl" else metric
            values[metric] = float(task.with_metric(fn).score(final))
        return values

    def baseline(self, model_spec: str, task_label: str, seed: int) -> _Baseline:
        key = (model_spec, task_label, seed)
        if key not in self._baselines:
            model = self.model(model_spec)
            task = build_unit_task(self._tasks[task_label], model.tokenizer, seed).to(self.device)
            task.check_model(model)
            clean_final = self._final_logits(model, task, lambda a, b: [])
            corrupt_final = self._final_logits(model, _as_clean(task, task.corrupted), lambda a, b: [])
            clean = self._scores(task, clean_final, clean_final)
            corrupted = self._scores(task, corrupt_final, clean_final)
            self._baselines[key] = _Baseline(task, clean_final, {m: (clean[m], corrupted[m]) for m in clean})
        return self._baselines[key]

    def components(self, unit: Unit) -> tuple[str, ...]:
        if unit.target_kind != "top_k":
            return unit.components
        if unit.model not in self._top_k:
            top = self.spec.targets.top_k_from
            self._top_k[unit.model] = top_k_heads(self.model(unit.model), top.score, top.k)
        return self._top_k[unit.model]

    def run(self, unit: Unit) -> dict[str, Any]:
        """Compute one unit's row."""
        from circuitkit.ablation.hooks import ablation_hooks

        start = time.perf_counter()
        model = self.model(unit.model)
        base = self.baseline(unit.model, unit.task, unit.seed)
        task = base.task
        comps = list(self.components(unit))
        n = len(task)
        if unit.ablation == "resample":
            # Reference rows rolled so that chunk prompts draw from the whole task, never themselves.
            def hooks_for_chunk(a, b):
                return ablation_hooks(model, comps, "resample", task.clean.roll(-a, 0), unit.seed, batch_size=b - a)
        else:
            shared = ablation_hooks(model, comps, unit.ablation, task.clean, unit.seed, batch_size=n)

            def hooks_for_chunk(a, b):
                return shared
        final = self._final_logits(model, task, hooks_for_chunk)
        ablated = self._scores(task, final, base.clean_final)
        row: dict[str, Any] = {
            "model": unit.model, "task": unit.task, "ablation": unit.ablation, "target": unit.target,
            "seed": int(unit.seed), "target_kind": unit.target_kind, "components": ",".join(comps),
            "n_components": len(comps), "n_prompts": n,
        }
        for metric in self.spec.metrics:
            clean, corrupted = base.values[metric]
            gap = clean - corrupted
            row[metric] = ablated[metric]
            row[f"{metric}_clean"] = clean
            row[f"{metric}_corrupted"] = corrupted
            row[f"{metric}_recovered"] = (ablated[metric] - corrupted) / gap if abs(gap) > 1e-12 else float("nan")
        row["recovered"] = row[f"{self.spec.metrics[0]}_recovered"]
        row["seconds"] = time.perf_counter() - start
        return row


def _as_clean(task, tokens: Tensor):
    import dataclasses

    return dataclasses.replace(task, clean=tokens)


def top_k_heads(model, score: str, k: int, n_prompts: int = 4) -> tuple[str, ...]:
    """The ``k`` heads with the highest TransformerLens ``head_detector`` score (``induction``,
    ``previous_token``, ``duplicate_token``) on repeated random-token prompts; ties by position."""
    from transformer_lens.head_detector import detect_head

    from circuitkit.tasks.builders import induction

    seq_len = max(2, min(10, (model.cfg.n_ctx - 2) // 2))
    task = induction(model.tokenizer, n_prompts=n_prompts, seq_len=seq_len, seed=0, prepend_bos=False)
    texts = [model.to_string(row) for row in task.clean]
    with torch.no_grad():
        grid = detect_head(model, texts, HEAD_SCORES[score])
    ranked = sorted((-float(grid[layer, h]), layer, h) for layer in range(grid.shape[0]) for h in range(grid.shape[1]))
    return tuple(names.head(layer, h) for _, layer, h in ranked[:k])


# --- running a study ------------------------------------------------------------------------------

def _coerce_spec(spec_or_path: StudySpec | str | os.PathLike | dict) -> StudySpec:
    if isinstance(spec_or_path, StudySpec):
        return spec_or_path
    if isinstance(spec_or_path, dict):
        return StudySpec.from_dict(spec_or_path)
    return StudySpec.from_file(spec_or_path)


def prepare_run(spec: StudySpec, force_new: bool = False) -> list[Unit]:
    """Validate, check the output folder against the spec's hash, and list units still to run."""
    infos = validate(spec)
    units = plan_units(spec, infos)
    out = spec.output_dir
    spec_hash = spec.hash()
    existing = store.read_study_file(out)
    has_parts = bool(store.part_files(out))
    if existing is not None and existing.get("spec_hash") != spec_hash or existing is None and has_parts:
        if not force_new:
            old = existing.get("spec_hash") if existing else "unknown"
            raise SpecError(
                f"output_dir {str(out)!r} holds results of a different spec (hash {old}, this spec {spec_hash}); "
                "use another output_dir, restore the old spec to resume, or pass --force-new "
                "(force_new=True) to delete the old results and start over"
            )
        store.clear(out)
    store.prepare(out)
    store.write_study_file(out, {"spec_hash": spec_hash, "spec": spec.to_dict(), "n_units": len(units)})
    done = store.done_keys(out)
    return [u for u in units if u.key not in done]


def run_study(
    spec_or_path: StudySpec | str | os.PathLike | dict,
    executor: str = "serial",
    workers: int | None = None,
    force_new: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or resume) a study and return its full results table (:func:`load_results`).

    ``executor``: ``"serial"`` (this process), ``"process"`` (``workers`` spawned processes on
    this machine) or ``"ray"`` (``workers`` Ray actors; connects to a running cluster when
    ``RAY_ADDRESS`` is set, else starts a local one). Finished units are committed as they come,
    so calling again after an interruption runs only what is missing.
    """
    from circuitkit.studies.executors import EXECUTORS, check_executor

    check_executor(executor, workers)
    spec = _coerce_spec(spec_or_path)
    todo = prepare_run(spec, force_new)
    if todo:
        EXECUTORS[executor](spec, todo, workers, progress)
    return store.load_results(spec.output_dir)


def load_results(output_dir: str | os.PathLike | Path) -> pd.DataFrame:
    """The results table of a study folder (see :func:`circuitkit.studies.store.load_results`)."""
    return store.load_results(output_dir)
