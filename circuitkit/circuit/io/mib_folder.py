"""A submission folder for the circuit track of the Mechanistic Interpretability Benchmark (MIB).

What MIB's evaluation reads (github:hannamw/MIB-circuit-track ``README.md`` and ``run_evaluation.py``;
its leaderboard back end github:mttk/MIB-circuit-track-autoeval ``eval_submissions.py``,
``run_evaluation.py``, ``MIB_circuit_track/evaluation.py`` and ``circuit_loading.py``), and so what
`mib_submission` writes:

* the submission is a folder (one per method) holding one folder per task and model, named
  ``{task}_{model}`` with the task's hyphenated name: ``ioi_gpt2``, ``arc-easy_llama3``. The back
  end recognises a folder by a task name and a model name at its start or after an ``_``, skips
  other folders, and evaluates only the task / model pairs of its leaderboard (`MIB_PAIRS`);
* a task / model folder holds either exactly **one** file (``.json`` or ``.pt``): importance scores
  for every edge (or node), which MIB itself cuts at each size of its curve with ``apply_topn(int(pct
  * n_edges), absolute, prune=True)`` (signed for CPR, ``|score|`` for CMD), or **two or more**
  files: circuits, of which it loads the first nine ``.json`` / ``.pt`` it lists (in no set order),
  sorts them by in-graph edge count and places them at 0.1, 0.2, 0.5, 1, 2, 5, 10, 20 and 50 % of
  the model's edges, the full model (faithfulness 1) at 100 %. So exactly one file or exactly nine,
  and no other file in the folder (one extra file turns scores into a one-circuit "curve");
* each file is EAP-IG graph JSON (`to_mib`): EAP-IG's ``Graph.from_json`` reads a scores file, MIB's
  ``load_graph_from_json`` a circuit file; a circuit is evaluated after ``Graph.prune``.

MIB's README lists ten sizes, ``{0, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50}`` %, for its nine
circuits; its evaluation places nine circuits at the nine sizes from 0.1 % (`MIB_PERCENTAGES`), and
a circuit at size ``pct`` keeps at most ``int(pct / 100 * n_edges)`` edges.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitkit import names
from circuitkit.atomic import folder_written, write_bytes
from circuitkit.circuit.core import Circuit
from circuitkit.circuit.evaluation import MIB_KS, mib_prune, mib_size, rank_edges
from circuitkit.circuit.io.common import endpoints
from circuitkit.circuit.io.mib import mib_edges, to_mib
from circuitkit.errors import InputError, InputTypeError, MissingFileError, UnknownNameError
from circuitkit.scores import Scores


@dataclass(frozen=True)
class MibModel:
    """A model of MIB's circuit track, as EAP-IG's graph sees it (``parallel_attn_mlp`` is False for all)."""

    name: str
    hf_name: str
    n_layers: int
    n_heads: int
    d_model: int

    @property
    def n_edges(self) -> int:
        """Edges of EAP-IG's graph of this model (MIB's ``EDGE_COUNTS``)."""
        return len(mib_edges(self.n_layers, self.n_heads))


MIB_MODELS: dict[str, MibModel] = {m.name: m for m in (
    MibModel("gpt2", "gpt2-small", 12, 12, 768),
    MibModel("qwen2.5", "Qwen/Qwen2.5-0.5B", 24, 14, 896),
    MibModel("gemma2", "google/gemma-2-2b", 26, 8, 2304),
    MibModel("llama3", "meta-llama/Llama-3.1-8B", 32, 32, 4096),
)}
MIB_TASKS = ("ioi", "mcqa", "arithmetic-addition", "arithmetic-subtraction", "arc-easy", "arc-challenge")
# The leaderboard's task / model pairs (its COL_MAPPING); other pairs are not evaluated.
MIB_PAIRS = (("ioi", "gpt2"), ("ioi", "qwen2.5"), ("ioi", "gemma2"), ("ioi", "llama3"),
             ("mcqa", "qwen2.5"), ("mcqa", "gemma2"), ("mcqa", "llama3"),
             ("arithmetic-addition", "llama3"), ("arithmetic-subtraction", "llama3"),
             ("arc-easy", "gemma2"), ("arc-easy", "llama3"), ("arc-challenge", "llama3"))
MIB_PERCENTAGES = tuple(k for k in MIB_KS if k < 100)  # the nine circuits' sizes, % of the model's edges
MODES = ("importances", "circuits")
RANKINGS = ("signed", "absolute")
IMPORTANCES_FILE = "importances.json"  # the name MIB's run_attribution.py gives it
SUFFIXES = (".json", ".pt")


def circuit_file(pct: float) -> str:
    """The name of the circuit file at ``pct`` % of the edges (MIB reads any name; this one says the size)."""
    return f"circuit_{pct:g}pct.json"


def folder_name(task: str, model: str) -> str:
    """``{task}_{model}`` after checking the pair is one MIB's leaderboard evaluates."""
    task = task.strip().lower().replace("_", "-")
    model = model.strip().lower()
    _model(model)
    if task not in MIB_TASKS:
        raise UnknownNameError(f"MIB's circuit track has no task {task!r}; choose one of {MIB_TASKS}")
    if (task, model) not in MIB_PAIRS:
        pairs = ", ".join(f"{t}_{m}" for t, m in MIB_PAIRS)
        raise InputError(f"MIB evaluates no {task} circuits of {model} (its leaderboard skips the pair); "
                         f"the pairs it evaluates are {pairs}")
    return f"{task}_{model}"


def _check_shape(attrs: dict[str, Any], model: MibModel, what: str) -> None:
    n_layers, n_heads = attrs.get("n_layers"), attrs.get("n_heads")
    if (n_layers, n_heads) != (model.n_layers, model.n_heads) and None not in (n_layers, n_heads):
        raise InputError(f"{what} {n_layers} layers x {n_heads} heads, but MIB's {model.name} has "
                         f"{model.n_layers} x {model.n_heads}: score {model.hf_name} or pick its model name")


def _edge_scores(result: Scores | Circuit, model: MibModel) -> Scores:
    """Edge scores for every edge of ``model``'s EAP-IG graph (a circuit's raw scores where it keeps them)."""
    if isinstance(result, Circuit):
        _check_shape(result.graph.graph, model, "the circuit has")
        values = {}
        for key in result.all_edges:
            data = result.edge_data(key)
            value = data.get("raw_score", data["score"])
            if value is not None:
                values[key] = value
        if not values:
            raise InputError("the circuit has no edge scores to rank; give the Scores (or a circuit from discover)")
        scores = Scores.from_dict(values, result.method, task=result.task)
    else:
        _check_shape(result.meta or {}, model, "the scores are for")
        scores = result
    if not scores.is_edge:
        raise InputError("MIB's nine circuits are cut by edge count; give edge scores (eap, eap_ig, "
                         "exact_edge_patching), or node scores with mode='importances'")
    _check_covers(scores.labels, mib_edges(model.n_layers, model.n_heads), model, "edge")
    return scores


def _check_covers(labels: Sequence[str], wanted: Sequence[str], model: MibModel, kind: str) -> None:
    have, known = set(labels), set(wanted)
    foreign = [x for x in labels if x not in known]
    if foreign:
        raise InputError(f"{kind}s {foreign[:3]} are not in EAP-IG's graph of {model.name} "
                         f"({model.n_layers} layers x {model.n_heads} heads); score {model.hf_name}'s own graph")
    missing = [x for x in wanted if x not in have]
    if missing:
        raise InputError(f"no score for {len(missing)} of {model.name}'s {len(wanted)} {kind}s (e.g. {missing[:3]}); "
                         "MIB ranks every one, an unlisted one as 0: score them all "
                         "(drop in-graph pruning before exporting, or export the method's Scores)")


def _importances(result: Scores | Circuit, model: MibModel) -> dict[str, bytes]:
    shape = {"n_layers": model.n_layers, "n_heads": model.n_heads, "has_mlp": True}
    if isinstance(result, Scores):
        if result.is_edge:
            _edge_scores(result, model)
        else:
            _check_shape(result.meta or {}, model, "the scores are for")
            wanted = [names.head(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]
            wanted += [names.mlp(layer) for layer in range(model.n_layers)]
            _check_covers(result.labels, wanted, model, "node")
        circuit = Circuit.from_scores(result, **shape)
    elif isinstance(result, Circuit):
        if result.level == "edge":
            _edge_scores(result, model)
        else:
            _check_shape(result.graph.graph, model, "the circuit has")
        circuit = result
    else:
        raise InputTypeError(f"mode='importances' takes Scores or a Circuit, got {type(result).__name__}")
    data = to_mib(circuit, d_model=model.d_model, parallel_attn_mlp=False)
    return {IMPORTANCES_FILE: _dumps(data)}


def _model(name: str) -> MibModel:
    if name not in MIB_MODELS:
        raise UnknownNameError(f"MIB's circuit track has no model {name!r}; choose one of {tuple(MIB_MODELS)}")
    return MIB_MODELS[name]


def mib_circuits(scores: Scores | Circuit, model: str, ranking: str = "signed") -> dict[float, list[str]]:
    """The in-graph edges of MIB's nine circuits of ``model`` from one edge-score set: at each size
    ``pct`` of `MIB_PERCENTAGES`, the top ``int(pct / 100 * n_edges)`` edges (``ranking="signed"``:
    the edges the behaviour needs most, MIB's CPR order; ``"absolute"``: by ``|score|``, its CMD
    order), less those on no ``input -> logits`` path, as MIB's ``apply_topn(n, absolute, prune=True)``
    keeps them. ``scores`` in circuitkit's sign (or a circuit whose scores these are)."""
    if ranking not in RANKINGS:
        raise InputError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    spec = _model(model)
    return _cut(_edge_scores(scores, spec), spec, ranking)


def _cut(scores: Scores, spec: MibModel, ranking: str) -> dict[float, list[str]]:
    edges = mib_edges(spec.n_layers, spec.n_heads)
    order = rank_edges(scores, edges, by_abs=ranking == "absolute")
    return {pct: mib_prune(order[:mib_size(pct, len(edges))]) for pct in MIB_PERCENTAGES}


def _circuits(result, model: MibModel, ranking: str) -> dict[str, bytes]:
    if isinstance(result, (Scores, Circuit)):
        scores = _edge_scores(result, model)
        if isinstance(result, Circuit):
            full = result.with_members(result.all_edges, "edge", prune=False)
        else:
            full = Circuit.from_scores(scores, n_layers=model.n_layers, n_heads=model.n_heads, has_mlp=True)
        data = to_mib(full, d_model=model.d_model, parallel_attn_mlp=False)  # once: the nine differ in in_graph only
        kept = _cut(scores, model, ranking)
        return {circuit_file(pct): _dumps(with_in_graph(data, kept[pct])) for pct in MIB_PERCENTAGES}
    if not isinstance(result, Sequence) or isinstance(result, str):
        raise InputTypeError(f"mode='circuits' takes edge Scores, a Circuit or nine Circuits, got {type(result).__name__}")
    circuits = list(result)
    if len(circuits) != len(MIB_PERCENTAGES) or not all(isinstance(c, Circuit) for c in circuits):
        raise InputError(f"mode='circuits' takes edge Scores (the nine circuits are cut from them) or exactly "
                         f"{len(MIB_PERCENTAGES)} Circuits, one per size {MIB_PERCENTAGES} %; got {len(circuits)} items")
    known = set(mib_edges(model.n_layers, model.n_heads))
    for c in circuits:
        _check_shape(c.graph.graph, model, "a circuit has")
        if c.level != "edge":
            raise InputError("MIB's nine circuits are edge circuits; give circuits with edges")
        foreign = [k for k in c.all_edges if k not in known]
        if foreign:
            raise InputError(f"edges {foreign[:3]} are not in EAP-IG's graph of {model.name}; "
                             f"give circuits of {model.hf_name}")
    circuits = sorted((c.prune_dangling() for c in circuits), key=lambda c: len(c.edges))
    for pct, c in zip(MIB_PERCENTAGES, circuits, strict=True):
        budget = mib_size(pct, model.n_edges)
        if len(c.edges) > budget:
            raise InputError(f"MIB places the circuits, smallest first, at {MIB_PERCENTAGES} % of "
                             f"{model.name}'s {model.n_edges} edges; the one at {pct:g} % may keep {budget} "
                             f"edges but keeps {len(c.edges)} (after MIB's pruning): give smaller circuits")
    return {circuit_file(pct): _dumps(to_mib(c, d_model=model.d_model, parallel_attn_mlp=False))
            for pct, c in zip(MIB_PERCENTAGES, circuits, strict=True)}


def with_in_graph(data: dict[str, Any], edges: Sequence[str]) -> dict[str, Any]:
    """The MIB JSON ``data`` (`to_mib` of an edge circuit) with exactly ``edges`` in the graph and
    the nodes they touch: what `to_mib` writes for ``circuit.with_members(edges, prune=False)`` when
    ``edges`` lie on ``input -> logits`` paths, without rebuilding the circuit."""
    kept = set(edges)
    touched = {n for k in kept for n in endpoints(k)}
    cfg = dict(data["cfg"])
    if "circuitkit" in cfg:
        cfg["circuitkit"] = {**cfg["circuitkit"], "pruned_dangling": []}
    return {"cfg": cfg,
            "nodes": {n: {**v, "in_graph": n in touched} for n, v in data["nodes"].items()},
            "edges": {k: {**v, "in_graph": k in kept} for k, v in data["edges"].items()}}


def _dumps(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, allow_nan=False) + "\n").encode()


def mib_submission(result: Scores | Circuit | Sequence[Circuit], folder: str | os.PathLike, *, task: str, model: str,
                   mode: str = "importances", ranking: str = "signed") -> Path:
    """Write ``result`` into MIB's circuit-track submission ``folder`` (one folder per method) as its
    ``{task}_{model}`` folder, the layout MIB's evaluation reads (see the module docstring).

    ``mode="importances"``: one file, ``importances.json``, with every edge's score (or every head's
    and MLP's: a node-level submission) in MIB's sign; MIB cuts its own circuits from it, signed for
    CPR and by ``|score|`` for CMD. ``mode="circuits"``: nine circuit files,
    ``circuit_{pct}pct.json``, one per size of `MIB_PERCENTAGES`: from edge Scores (or a circuit's
    scores) as `mib_circuits` cuts them (``ranking``: ``"signed"``, the top edges for CPR, or
    ``"absolute"``, for CMD; MIB scores the same nine circuits for both), or nine Circuits given
    (each must fit its size once pruned as MIB prunes). ``task`` / ``model``: MIB's names
    (`MIB_TASKS`, `MIB_MODELS`), a pair on its leaderboard (`MIB_PAIRS`); the scores must cover
    that model's whole EAP-IG graph.

    Everything is checked and serialised before anything is written; the task / model folder is
    written beside and renamed into place, replacing any earlier one whole (so no stale file changes
    how MIB reads it). Other task / model folders in ``folder`` are left alone. Returns the path of
    the task / model folder.

    Examples:
        >>> import os, tempfile, torch
        >>> import circuitkit as ck
        >>> from circuitkit.circuit.io.mib import mib_edges
        >>> edges = mib_edges(12, 12)  # GPT-2 small's graph: MIB's gpt2
        >>> scores = ck.Scores(torch.randn(len(edges), generator=torch.Generator().manual_seed(0)), edges, "eap-ig")
        >>> root = tempfile.mkdtemp()
        >>> path = ck.mib_submission(scores, root, task="ioi", model="gpt2", mode="circuits")
        >>> path.name, sorted(os.listdir(path))[:3], len(os.listdir(path))
        ('ioi_gpt2', ['circuit_0.1pct.json', 'circuit_0.2pct.json', 'circuit_0.5pct.json'], 9)
        >>> [(e["task"], e["mode"], e["n_edges"]) for e in ck.check_mib_submission(root)]
        [('ioi', 'circuits', [0, 0, 0, 0, 11, 706, 2044, 4944, 14318])]
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    if ranking not in RANKINGS:
        raise InputError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    name = folder_name(task, model)
    spec = MIB_MODELS[name.split("_", 1)[1]]
    files = _importances(result, spec) if mode == "importances" else _circuits(result, spec, ranking)
    target = Path(folder) / name
    with folder_written(target) as tmp:
        for file, data in files.items():
            write_bytes(tmp / file, data)
    return target


# --- what MIB's back end finds in a submission folder ---------------------------------------------

def _match(dir_name: str) -> tuple[str | None, str | None]:
    """The task and model MIB's back end reads from a folder name: the first of its names that the
    folder starts with or holds after an ``_`` (it lists the tasks both with ``_`` and ``-``)."""
    lower = dir_name.lower()
    tasks = [spelling for t in MIB_TASKS for spelling in dict.fromkeys((t.replace("-", "_"), t))]
    task = next((t for t in tasks if lower.startswith(t) or f"_{t}" in lower), None)
    model = next((m for m in MIB_MODELS if lower.startswith(m) or f"_{m}" in lower), None)
    return (task.replace("_", "-") if task else None), model


def check_mib_submission(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """What MIB's back end would evaluate in the submission ``folder``: one entry per task / model
    folder (``task``, ``model``, ``path``, ``mode`` "importances" or "circuits", ``files`` and, for
    circuits, ``n_edges``: each file's in-graph edges, smallest first). ``InputError`` listing every
    folder MIB would skip or fail on: a name it cannot read or a pair it does not evaluate, no
    file, a number of circuits other than nine, a file that is neither ``.json`` nor ``.pt``, a
    circuit over its size. (Folders named ``abs-True`` / ``abs-False``, which the back end searches
    for task / model folders evaluated for CMD / CPR only, are searched too.)

    Examples:
        >>> import tempfile
        >>> import circuitkit as ck
        >>> ck.check_mib_submission(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        circuitkit.errors.InputError: ... holds no task / model folder MIB would evaluate; write one with mib_submission
    """
    root = Path(folder)
    if not root.is_dir():
        raise MissingFileError(f"no submission folder at {root}")
    entries: list[dict[str, Any]] = []
    problems: list[str] = []

    def visit(path: Path) -> None:
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            lower = sub.name.lower()
            if "abs" in lower and ("true" in lower or "false" in lower):
                visit(sub)
                continue
            if sub.name.startswith("."):
                problems.append(f"{sub}: a hidden folder (an interrupted write?); delete it")
                continue
            task, model = _match(sub.name)
            if task is None or model is None:
                problems.append(f"{sub}: MIB reads no task / model from this name and skips it; name it "
                                f"{{task}}_{{model}}, e.g. ioi_gpt2")
                continue
            if (task, model) not in MIB_PAIRS:
                problems.append(f"{sub}: MIB evaluates no {task} circuits of {model}")
                continue
            entry = _entry(sub, task, model, problems)
            if entry is not None:
                entries.append(entry)

    visit(root)
    if problems:
        raise InputError("MIB would skip or fail on parts of this submission:\n  " + "\n  ".join(problems))
    if not entries:
        raise InputError(f"{root} holds no task / model folder MIB would evaluate; write one with mib_submission")
    return entries


def _entry(path: Path, task: str, model: str, problems: list[str]) -> dict[str, Any] | None:
    files = sorted(os.listdir(path))
    entry: dict[str, Any] = {"task": task, "model": model, "path": str(path), "files": files}
    if not files:
        problems.append(f"{path}: empty; write importances or nine circuits into it")
        return None
    if len(files) == 1:
        if not files[0].endswith(SUFFIXES):
            problems.append(f"{path / files[0]}: MIB reads .json or .pt only")
            return None
        return {**entry, "mode": "importances"}
    circuits = [f for f in files if f.endswith(SUFFIXES)]
    others = [f for f in files if f not in circuits]
    if others or len(circuits) != len(MIB_PERCENTAGES):
        problems.append(f"{path}: {len(circuits)} circuit files and {len(others)} others ({others[:3]}); MIB "
                        f"reads one importances file or exactly {len(MIB_PERCENTAGES)} circuits and nothing else")
        return None
    counts = []
    for f in circuits:
        if f.endswith(".pt"):
            return {**entry, "mode": "circuits"}  # circuitkit writes JSON; no edge counts for .pt
        data = json.loads((path / f).read_text())
        counts.append(sum(1 for e in data.get("edges", {}).values() if e.get("in_graph")))
    counts.sort()
    total = MIB_MODELS[model].n_edges
    for pct, n in zip(MIB_PERCENTAGES, counts, strict=True):
        if n > mib_size(pct, total):
            problems.append(f"{path}: sorted by size, the circuit MIB places at {pct:g} % has {n} edges, over "
                            f"int({pct:g} % of {total}) = {mib_size(pct, total)}")
    return {**entry, "mode": "circuits", "n_edges": counts}
