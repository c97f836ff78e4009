"""Run units: `UnitRunner` computes units' rows (each metric with the target ablated, the
clean and corrupted baselines, computed once per model / task / seed, and the share of behaviour
kept). Executors (`executors`) only decide where it runs; the numbers
are the same.

Two paths give the same numbers (tested):

* unit by unit (`UnitRunner.run`): one full forward pass with
  `ablation_hooks`, the slow obvious path;
* batched (`UnitRunner.run_many`): units sharing a model, task, seed and ablation kind run
  many per forward pass with the patching engine's helpers
  (`run_batched`, `masked_patch_hook`):
  copy ``i`` of the clean prompts along the batch gets unit ``i``'s components replaced, the pass
  starts from the cached residual stream at the lowest ablated layer, stops at the last answer
  position (causal attention), and a pass confined to the last layer runs only from the first
  answer position. Replacement values come from one cached clean run per (model, task, seed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuitkit import names
from circuitkit.ablation.kinds import resample_permutation
from circuitkit.ablation.nodes import ablation_hooks
from circuitkit.heads.patterns import head_scores
from circuitkit.models import backend
from circuitkit.models.loading import load_model
from circuitkit.patching.engine import (
    PatchRuns,
    masked_patch_hook,
    rows_per_pass,
    run_batched,
    run_keeping_keys_values,
)
from circuitkit.studies.checks import build_unit_task
from circuitkit.studies.plan import Unit
from circuitkit.studies.spec import StudySpec
from circuitkit.tasks.builders import induction
from circuitkit.tasks.metrics import make_kl_metric, normalized


@dataclass
class _Baseline:
    task: Any
    clean_final: Tensor  # [batch, vocab] logits at the answer positions
    values: dict[str, tuple[float, float]]  # metric -> (clean, corrupted)


@dataclass
class _CleanRun:
    """The clean run a batched pass starts from: the engine's `PatchRuns` (base = clean
    prompts, cut after the last answer position where attention is causal) whose cache holds
    ``resid_pre``, ``hook_z`` and ``hook_mlp_out`` of every layer and the last layer's keys and values."""

    runs: PatchRuns
    replacements: dict[tuple[str, str], Tensor]  # (kind, hook) -> [batch, pos, ...] values read instead


class UnitRunner:
    """Runs units of one spec, keeping loaded models, tasks, baselines and clean caches between units.

    ``batched``: `run_many` runs many units per forward pass (else one by one, as `run`).
    """

    def __init__(self, spec: StudySpec, device: str = "cpu", batched: bool = True):
        self.spec = spec
        self.device = device
        self.batched = batched
        self._tasks = {t.label: t for t in spec.tasks}
        self._paths = {spec.relative(m): m for m in spec.models}  # a unit's model key -> what to load
        self._models: dict[str, Any] = {}
        self._baselines: dict[tuple[str, str, int], _Baseline] = {}
        self._clean_runs: dict[tuple[str, str, int], _CleanRun] = {}
        self._top_k: dict[str, tuple[str, ...]] = {}

    def model(self, model_spec: str):
        if model_spec not in self._models:
            model = load_model(self._paths.get(model_spec, model_spec), device=self.device)
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
        if not self.batched:
            return 1
        model = self.model(unit.model)
        return rows_per_pass(model, self.clean_run(unit.model, unit.task, unit.seed).runs, self.spec.batch_size)

    def run_many(self, units: list[Unit]) -> list[dict[str, Any]]:
        """Rows of ``units`` (any mix), batched where ``self.batched``: grouped by model, task,
        seed, ablation kind and lowest ablated layer, as many per forward pass as
        `rows_per_pass` allows for ``spec.batch_size``."""
        if not self.batched:
            return [self.run(unit) for unit in units]
        # batched passes compute answer-position logits from the last residual stream: where a bridge's
        # logits are more than its final norm and unembedding (backend.audit), units run one by one
        unbatched = [u for u in units if not backend.audit(self.model(u.model)).ok("unembed")]
        if unbatched:
            done = {id(u): self.run(u) for u in unbatched}
            rest = iter(self.run_many([u for u in units if id(u) not in done]))
            return [done[id(u)] if id(u) in done else next(rest) for u in units]
        groups: dict[tuple, list[tuple[Unit, list[names.Node]]]] = {}
        for unit in units:
            nodes = [names.parse_node(c) for c in self.components(unit)]
            key = (unit.model, unit.task, unit.seed, unit.ablation, min(n.layer for n in nodes))
            groups.setdefault(key, []).append((unit, nodes))
        rows: dict[tuple, dict[str, Any]] = {}
        for (model_spec, task_label, seed, kind, start), members in groups.items():
            model = self.model(model_spec)
            clean = self.clean_run(model_spec, task_label, seed)
            k_max = rows_per_pass(model, clean.runs, self.spec.batch_size)
            for i in range(0, len(members), k_max):
                part = members[i:i + k_max]
                begin = time.perf_counter()
                finals = self._run_pass(model, clean, kind, seed, start, [nodes for _, nodes in part])
                seconds = (time.perf_counter() - begin) / len(part)
                base = self.baseline(model_spec, task_label, seed)
                for (unit, _), final in zip(part, finals, strict=True):
                    rows[unit.key] = self._row(unit, base, self._scores(base.task, final, base.clean_final), seconds)
        return [rows[unit.key] for unit in units]

    def clean_run(self, model_spec: str, task_label: str, seed: int) -> _CleanRun:
        """The cached clean run of (model, task, seed) that batched passes start from."""
        key = (model_spec, task_label, seed)
        if key not in self._clean_runs:
            model = self.model(model_spec)
            base = self.baseline(model_spec, task_label, seed)
            cfg = model.cfg
            # Only the logit difference reads just two columns of the logits; other metrics get all.
            task = base.task.with_metric("logit_diff" if self.spec.metrics == ["logit_diff"] else "accuracy")
            tokens = task.clean
            with torch.no_grad():
                _, shortformer, attention_mask = backend.embed(model, tokens)
            # Positions after the last answer cannot change the metric where a position sees only
            # earlier ones (the conditions under which the engine trims runs).
            causal = attention_mask is None and shortformer is None and backend.keeps_prefix_cache(model)
            if causal:
                tokens = tokens[:, :int(task.answer_pos.max()) + 1]
            hooks = [names.hook("resid_pre", layer) for layer in range(cfg.n_layers)]
            hooks += [names.hook("z", layer) for layer in range(cfg.n_layers)]
            if not cfg.attn_only:
                hooks += [names.hook("mlp_out", layer) for layer in range(cfg.n_layers)]
            wanted = set(hooks)
            keys_values = None
            with torch.no_grad():
                if causal:  # last-layer passes start at the first answer, reading earlier keys / values
                    _, cache, keys_values = run_keeping_keys_values(model, tokens, wanted, cfg.n_layers)
                else:
                    _, cache = backend.run_with_cache(model, tokens, wanted, cfg.n_layers)
            runs = PatchRuns(task, "noise", tokens, task.corrupted[:, :tokens.shape[1]], float("nan"), float("nan"),
                             {h: cache[h] for h in hooks}, {}, shortformer, attention_mask, base.clean_final,
                             prefix_ok=causal, base_keys_values=keys_values)
            self._clean_runs[key] = _CleanRun(runs, {})
        return self._clean_runs[key]

    def _replacement(self, clean: _CleanRun, kind: str, hook: str, seed: int) -> Tensor:
        """What ablation of ``kind`` reads at ``hook`` for each clean prompt ``[batch, pos, ...]``: the
        values `ablation_hooks` gives `run` (resample pairs
        prompts within each ``batch_size`` chunk as `run` does)."""
        if (kind, hook) not in clean.replacements:
            act = clean.runs.base_cache[hook]
            n = act.shape[0]
            if kind == "zero":
                value = torch.zeros_like(act)
            elif kind == "mean":
                value = act.mean(0, keepdim=True).expand_as(act)
            else:  # chunk [a, b) reads reference row (perm[i] + a) % n, perm of the chunk's size
                size = self.spec.batch_size or n
                index = torch.cat([(resample_permutation(n, min(n, a + size) - a, seed) + a) % n
                                   for a in range(0, n, size)])
                value = act[index.to(act.device)]
            clean.replacements[(kind, hook)] = value
        return clean.replacements[(kind, hook)]

    def _run_pass(self, model, clean: _CleanRun, kind: str, seed: int, start: int,
                  units: list[list[names.Node]]) -> list[Tensor]:
        """One forward pass for ``len(units)`` units: answer-position logits ``[batch, vocab]`` each."""
        runs = clean.runs
        cfg = model.cfg
        k = len(units)
        n, seq = runs.base_tokens.shape
        # Confined to the last layer (z and mlp_out feed no keys or values there): only the answer
        # positions can change, so the pass starts at the first one, reading earlier keys / values.
        prefix = int(runs.task.answer_pos.min()) if runs.prefix_ok and start == cfg.n_layers - 1 else 0
        masks: dict[str, Tensor] = {}
        for j, nodes in enumerate(units):
            for node in nodes:
                if node.kind == "head":
                    name = names.hook("z", node.layer)
                    mask = masks.setdefault(name, torch.zeros(k, seq, cfg.n_heads, dtype=torch.bool))
                    mask[j, :, node.head] = True
                else:
                    name = names.hook("mlp_out", node.layer)
                    masks.setdefault(name, torch.zeros(k, seq, dtype=torch.bool))[j] = True
        device = runs.base_tokens.device
        hooks = [(name, masked_patch_hook(mask.to(device), self._replacement(clean, kind, name, seed), k, prefix))
                 for name, mask in masks.items()]
        logits = run_batched(model, runs, start, hooks, k, prefix=prefix)
        return list(logits.reshape(k, n, *logits.shape[1:]))

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
        return self._row(unit, base, self._scores(task, final, base.clean_final), time.perf_counter() - start)

    def _row(self, unit: Unit, base: _Baseline, ablated: dict[str, float], seconds: float) -> dict[str, Any]:
        comps = list(self.components(unit))
        row: dict[str, Any] = {
            "model": unit.model, "task": unit.task, "ablation": unit.ablation, "target": unit.target,
            "seed": int(unit.seed), "target_kind": unit.target_kind, "components": ",".join(comps),
            "n_components": len(comps), "n_prompts": len(base.task),
        }
        for metric in self.spec.metrics:
            clean, corrupted = base.values[metric]
            row[metric] = ablated[metric]
            row[f"{metric}_clean"] = clean
            row[f"{metric}_corrupted"] = corrupted
            row[f"{metric}_recovered"] = float(normalized(ablated[metric], clean, corrupted, on_equal="nan"))
        row["recovered"] = row[f"{self.spec.metrics[0]}_recovered"]
        row["seconds"] = seconds
        return row


def _as_clean(task, tokens: Tensor):
    import dataclasses

    return dataclasses.replace(task, clean=tokens)


def top_k_heads(model, score: str, k: int, n_prompts: int = 4) -> tuple[str, ...]:
    """The ``k`` heads with the highest `circuitkit.heads.head_scores` of kind ``score``
    (``induction``, ``previous_token``, ``duplicate_token``, ``locality``, ``echo``) on repeated
    random-token prompts; ties by position."""
    seq_len = max(2, min(10, (model.cfg.n_ctx - 2) // 2))
    task = induction(model.tokenizer, n_prompts=n_prompts, seq_len=seq_len, seed=0, prepend_bos=False)
    # as text, each prompt tokenised alone, as TransformerLens's detect_head reads it
    scores = head_scores(model, [model.to_string(row) for row in task.clean], score)
    ranked = sorted((-float(v), names.parse_node(label).layer, names.parse_node(label).head)
                    for label, v in zip(scores.labels, scores.values.tolist(), strict=True))
    return tuple(names.head(layer, h) for _, layer, h in ranked[:k])


