"""Plan a study into units: one ``(model, task, ablation, target, seed)`` each, grouped so that
models and baselines are reused; `prepare_run` lists the units a resumed run still lacks."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitkit import names
from circuitkit.studies import store
from circuitkit.studies.checks import validate
from circuitkit.studies.identity import describe_change, study_record
from circuitkit.studies.spec import SpecError, StudySpec


@dataclass(frozen=True)
class Unit:
    """One row of the results table. ``components`` is empty for ``top_k`` targets, which are
    resolved from the model's head scores where the unit runs."""

    model: str  # as the spec names it (a model folder inside the spec's folder: ./NAME, `StudySpec.relative`)
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
        model_key = spec.relative(model_spec)  # a model folder inside the spec's folder: ./NAME
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
                    units += [Unit(model_key, task_spec.label, kind, target, target_kind, comps, seed)
                              for target, target_kind, comps in targets]
    return units


def coerce_spec(spec_or_path: StudySpec | str | os.PathLike | dict) -> StudySpec:
    if isinstance(spec_or_path, StudySpec):
        return spec_or_path
    if isinstance(spec_or_path, dict):
        return StudySpec.from_dict(spec_or_path)
    return StudySpec.from_file(spec_or_path)


def plan_study(spec: StudySpec) -> tuple[list[Unit], dict, dict[str, Any]]:
    """Validate ``spec`` (`validate`) and plan it: its units, the models' `ModelInfo` and the
    study's record (`circuitkit.studies.identity.study_record`: identity, input digests, versions)."""
    infos = validate(spec)
    units = plan_units(spec, infos)
    return units, infos, study_record(spec, len(units))


def open_store(spec: StudySpec, units: list[Unit], record: dict[str, Any],
               force_new: bool = False) -> tuple[list[Unit], store.FolderLock]:
    """Check ``output_dir`` against the study's identity and open it: the units still to run and
    the run's lock on the folder (held shared; the caller closes it).

    A folder holding another study (another spec, changed input files, other versions) is
    refused naming what changed, unless ``force_new`` (then its results are deleted). An
    unreadable ``study.json`` is rebuilt from the spec when every part in the folder carries
    this study's identity (else refused; ``force_new`` starts over). Storage failures raise
    `store.StoreError`."""
    out = Path(spec.output_dir)
    identity = record["identity"]
    try:
        lock = store.FolderLock(out)
    except OSError as exc:
        raise store.StoreError("open", exc.filename or out / store.LOCK_FILE, exc) from exc
    try:
        lock.shared()
        try:
            existing, corrupt = store.read_study_file(out), None
        except store.CorruptStudyFile as exc:
            existing, corrupt = None, exc
        if existing is not None:
            if existing.get("identity") != identity:
                if not force_new:
                    raise SpecError(describe_change(existing, record, out))
                store.clear(out, lock)
        else:
            others = store.part_identities(out) - {identity}
            if others or corrupt is not None and force_new:
                if not force_new:
                    if corrupt is not None:
                        raise corrupt
                    raise SpecError(
                        f"output_dir {str(out)!r} holds results of a different spec (hash unknown: it has no "
                        f"{store.STUDY_FILE}, this spec {record['spec_hash']}); use another output_dir, or pass "
                        "--force-new (force_new=True) to delete the old results and start over")
                store.clear(out, lock)
            elif corrupt is not None:
                warnings.warn(f"study store: {corrupt.args[0].split(';')[0]}; rebuilt it from this spec (every part "
                              "in the folder carries this study's identity, so the results are kept)", stacklevel=3)
        store.prepare(out, lock)
        if existing != record:
            store.write_study_file(out, record)
        done = store.done_keys(out, identity)
    except OSError as exc:
        lock.close()
        raise store.StoreError("use", exc.filename or out, exc) from exc
    except BaseException:
        lock.close()
        raise
    return [u for u in units if u.key not in done], lock


def prepare_run(spec: StudySpec, force_new: bool = False) -> tuple[list[Unit], int, store.FolderLock]:
    """Validate, check the output folder against the study's identity: the units still to run, the
    number planned, and the run's lock on ``output_dir`` (held shared; the caller closes it)."""
    units, _, record = plan_study(spec)
    todo, lock = open_store(spec, units, record, force_new)
    return todo, len(units), lock
