"""A study's identity: everything its results depend on, so that a folder never mixes two experiments.

The identity hashes three things:

* the spec's settings (`StudySpec.hash`; model folders and task files inside the spec's folder
  by their path relative to it, so moving a study folder is not a change);
* the content (SHA-256) of every input file a unit reads: each task file, each local model
  folder's files (config, weights, tokenizer), each zoo model's ``card.json``,
  ``model.safetensors`` and ``tokenizer.json``;
* the circuitkit and TransformerLens versions.

``study.json`` records the identity with each input's digest and the versions, and every Parquet
part carries the identity in its metadata. A run whose identity differs from the folder's is
refused, naming what changed (`describe_change`); ``--force-new`` starts over. A model given by a
TransformerLens / Hugging Face name counts by that name and the TransformerLens version.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from circuitkit.models.loading import parse_spec
from circuitkit.models.zoo_store import CARD_FILE, TOKENIZER_FILE, WEIGHTS_FILE, zoo_card
from circuitkit.studies.spec import StudySpec

STORE_VERSION = 2  # study.json of earlier versions records no inputs: refused as a changed study


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def folder_digests(folder: Path, label: str) -> dict[str, str]:
    """``{label/relative path: digest}`` for every file under ``folder`` (hidden names, such as a
    ``.git`` folder or editor files, are skipped)."""
    digests = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if path.is_file():
                digests[f"{label}/{path.relative_to(folder).as_posix()}"] = file_digest(path)
    return digests


def input_digests(spec: StudySpec) -> dict[str, str]:
    """The content digest of every file the spec's units read, keyed by how the spec names it."""
    digests: dict[str, str] = {}
    for model_spec in spec.models:
        parsed = parse_spec(model_spec)
        if parsed.kind == "zoo":
            card = zoo_card(parsed.name)
            for name in (CARD_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
                if (card.path / name).is_file():
                    digests[f"{model_spec}/{name}"] = file_digest(card.path / name)
        elif parsed.kind == "dir":
            digests.update(folder_digests(Path(model_spec).expanduser(), spec.relative(model_spec)))
    for task in spec.tasks:
        if task.file:
            digests[spec.relative(task.file)] = file_digest(task.file)
    return digests


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("circuitkit", "transformer_lens"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found


def study_record(spec: StudySpec, n_units: int) -> dict[str, Any]:
    """What ``study.json`` holds: the identity and what it is made of, the spec and the unit count."""
    inputs, found = input_digests(spec), versions()
    spec_hash = spec.hash()
    identity = hashlib.sha256(json.dumps({"spec": spec_hash, "inputs": inputs, "versions": found},
                                         sort_keys=True).encode()).hexdigest()[:16]
    return {"identity": identity, "spec_hash": spec_hash, "inputs": inputs, "versions": found,
            "spec": spec.to_dict(), "n_units": n_units, "store_version": STORE_VERSION}


def describe_change(old: dict[str, Any], new: dict[str, Any], out: Path) -> str:
    """Why the study in ``out`` (recorded as ``old``) is not this one (``new``), and the ways on."""
    fix = ("use another output_dir, or pass --force-new (force_new=True) to delete the old results and start over")
    if old.get("spec_hash") != new["spec_hash"]:
        return (f"output_dir {str(out)!r} holds results of a different spec (hash {old.get('spec_hash', 'unknown')}, "
                f"this spec {new['spec_hash']}); restore the old spec to resume, {fix}")
    if "inputs" not in old:
        return (f"output_dir {str(out)!r} holds results of this spec made by an older circuitkit that did not record "
                f"the content of its inputs, so they cannot be told apart from other inputs; {fix}")
    before, now = old.get("inputs", {}), new["inputs"]
    changes = []
    for key in sorted(set(before) | set(now)):
        if key not in now:
            changes.append(f"{key} is gone")
        elif key not in before:
            changes.append(f"{key} is new")
        elif before[key] != now[key]:
            changes.append(f"{key} changed (sha256 {before[key][:12]} then, {now[key][:12]} now)")
    if changes:
        shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
        return (f"output_dir {str(out)!r} holds results made from other inputs than this spec's: {shown} "
                f"(paths starting ./ are relative to the spec's folder); restore them to resume, {fix}")
    then = ", ".join(f"{k} {v}" for k, v in sorted(old.get("versions", {}).items()))
    now_v = ", ".join(f"{k} {v}" for k, v in sorted(new["versions"].items()))
    return (f"output_dir {str(out)!r} holds results made with {then or 'other versions'}, now {now_v}: the numbers "
            f"may differ; install those versions to resume, {fix}")
