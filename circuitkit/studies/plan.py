"""Plan a study into units: one ``(model, task, ablation, target, seed)`` each, grouped so that
models and baselines are reused; `prepare_run` lists the units a resumed run still lacks."""

from __future__ import annotations

import os
from dataclasses import dataclass

from circuitkit import names
from circuitkit.studies import store
from circuitkit.studies.checks import validate
from circuitkit.studies.spec import SpecError, StudySpec


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


def coerce_spec(spec_or_path: StudySpec | str | os.PathLike | dict) -> StudySpec:
    if isinstance(spec_or_path, StudySpec):
        return spec_or_path
    if isinstance(spec_or_path, dict):
        return StudySpec.from_dict(spec_or_path)
    return StudySpec.from_file(spec_or_path)


def prepare_run(spec: StudySpec, force_new: bool = False) -> tuple[list[Unit], int, store.FolderLock]:
    """Validate, check the output folder against the spec's hash: the units still to run, the
    number planned, and the run's lock on ``output_dir`` (held shared; the caller closes it)."""
    infos = validate(spec)
    units = plan_units(spec, infos)
    out = spec.output_dir
    lock = store.FolderLock(out)
    try:
        lock.shared()
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
            store.clear(out, lock)
        store.prepare(out, lock)
        store.write_study_file(out, {"spec_hash": spec_hash, "spec": spec.to_dict(), "n_units": len(units)})
        done = store.done_keys(out)
    except BaseException:
        lock.close()
        raise
    return [u for u in units if u.key not in done], len(units), lock
