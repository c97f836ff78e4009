"""Run units: :class:`UnitRunner` computes one unit's row (each metric with the target ablated, the
clean and corrupted baselines, computed once per model / task / seed, and the share of behaviour
kept). Executors (:mod:`~circuitkit.studies.executors`) only decide where it runs; the numbers
are the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformer_lens.head_detector import detect_head

from circuitkit import names
from circuitkit.ablation.nodes import ablation_hooks
from circuitkit.models.loading import load_model
from circuitkit.studies.checks import build_unit_task
from circuitkit.studies.plan import Unit
from circuitkit.studies.spec import HEAD_SCORES, StudySpec
from circuitkit.tasks.builders import induction
from circuitkit.tasks.metrics import make_kl_metric, normalized


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

    def units_per_pass(self, unit: Unit) -> int:
        """How many units like ``unit`` share one forward pass (serial runs commit that many at once)."""
        return 1

    def run_many(self, units: list[Unit]) -> list[dict[str, Any]]:
        """Rows of ``units`` (one model)."""
        return [self.run(unit) for unit in units]

    def run(self, unit: Unit) -> dict[str, Any]:
        """Compute one unit's row, unit by unit: one full forward pass with ablation hooks."""
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
            row[metric] = ablated[metric]
            row[f"{metric}_clean"] = clean
            row[f"{metric}_corrupted"] = corrupted
            row[f"{metric}_recovered"] = float(normalized(ablated[metric], clean, corrupted, on_equal="nan"))
        row["recovered"] = row[f"{self.spec.metrics[0]}_recovered"]
        row["seconds"] = time.perf_counter() - start
        return row


def _as_clean(task, tokens: Tensor):
    import dataclasses

    return dataclasses.replace(task, clean=tokens)


def top_k_heads(model, score: str, k: int, n_prompts: int = 4) -> tuple[str, ...]:
    """The ``k`` heads with the highest TransformerLens ``head_detector`` score (``induction``,
    ``previous_token``, ``duplicate_token``) on repeated random-token prompts; ties by position."""
    seq_len = max(2, min(10, (model.cfg.n_ctx - 2) // 2))
    task = induction(model.tokenizer, n_prompts=n_prompts, seq_len=seq_len, seed=0, prepend_bos=False)
    texts = [model.to_string(row) for row in task.clean]
    with torch.no_grad():
        grid = detect_head(model, texts, HEAD_SCORES[score])
    ranked = sorted((-float(grid[layer, h]), layer, h) for layer in range(grid.shape[0]) for h in range(grid.shape[1]))
    return tuple(names.head(layer, h) for _, layer, h in ranked[:k])


