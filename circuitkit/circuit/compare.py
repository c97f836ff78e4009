"""Compare circuits: precision / recall / IoU, ROC-AUC of scores against a reference circuit,
and component overlap across tasks ("Circuit Component Reuse Across Tasks", Merullo et al.)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from circuitkit import names
from circuitkit.circuit.core import Circuit
from circuitkit.errors import InputError
from circuitkit.scores import Scores

_ENDPOINTS = {names.INPUT, names.LOGITS}


@dataclass
class Overlap:
    """Set agreement of a circuit with a reference (``precision = |C ∩ R| / |C|`` etc.)."""

    level: str
    precision: float
    recall: float
    iou: float
    n_circuit: int
    n_reference: int
    n_shared: int


def _members(circuit: Circuit | Iterable[str], level: str) -> set[str]:
    if isinstance(circuit, Circuit):
        items = circuit.edges if level == "edge" else circuit.nodes
    else:
        items = [c for c in circuit if names.is_edge(c) == (level == "edge")]
    # input and logits belong to every circuit; counting them would inflate agreement
    return set(items) - _ENDPOINTS if level == "node" else set(items)


def overlap(circuit: Circuit | Iterable[str], reference: Circuit | Iterable[str], level: str = "node") -> Overlap:
    """Precision, recall and IoU of ``circuit``'s in-graph nodes or edges against ``reference``'s.

    ``input`` and ``logits`` are left out of node sets (every circuit has them).

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> circuit = ck.discover(model, task, method="eap-ig", steps=3)
        >>> result = ck.overlap(circuit, ck.reference_circuit("induction-handbuilt"), level="edge")
        >>> result.precision, round(result.recall, 2), result.n_shared
        (1.0, 0.71, 5)
    """
    if level not in ("node", "edge"):
        raise InputError(f"level must be 'node' or 'edge', got {level!r}")
    found, ref = _members(circuit, level), _members(reference, level)
    if not ref:
        raise InputError(f"the reference circuit has no {level}s; compare at the other level")
    shared = len(found & ref)
    union = len(found | ref)
    return Overlap(level, shared / len(found) if found else 0.0, shared / len(ref), shared / union if union else 0.0,
                   len(found), len(ref), shared)


def precision(circuit, reference, level: str = "node") -> float:
    """Share of `circuit`'s nodes (or edges, `level="edge"`) that are in `reference`
    (see `overlap`).

    Examples:
        >>> import circuitkit as ck
        >>> round(ck.precision(["a0.h0", "a1.h0", "a1.h2"], reference=["a0.h0", "a1.h0"]), 2)
        0.67
    """
    return overlap(circuit, reference, level).precision


def recall(circuit, reference, level: str = "node") -> float:
    """Share of `reference`'s nodes (or edges, `level="edge"`) that `circuit` has
    (see `overlap`).

    Examples:
        >>> import circuitkit as ck
        >>> ck.recall(["a0.h0", "a1.h0", "a1.h2"], reference=["a0.h0", "a1.h0"])
        1.0
    """
    return overlap(circuit, reference, level).recall


def iou(circuit, reference, level: str = "node") -> float:
    return overlap(circuit, reference, level).iou


def rank_auc(values: torch.Tensor, positive: torch.Tensor) -> float:
    """ROC-AUC as the Mann-Whitney statistic: P(score of a positive > score of a negative),
    ties counting one half (average ranks).

    Shapes: ``values`` ``[n]`` floats, ``positive`` ``[n]`` bools.
    """
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    positive = torch.as_tensor(positive, dtype=torch.bool).reshape(-1)
    n_pos = int(positive.sum())
    n_neg = int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError(f"ROC-AUC needs positives and negatives, got {n_pos} positive and {n_neg} negative "
                         "components; score more components than the reference circuit holds")
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    ranks = torch.empty_like(values)
    # average 1-based rank over each run of equal values
    unique, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks[order] = mean_rank[inverse]
    rank_sum = float(ranks[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def node_scores_from_edges(scores: Scores) -> Scores:
    """Node scores from edge scores: each node gets the sum of |score| over the edges touching it."""
    if not scores.is_edge:
        raise InputError("node_scores_from_edges needs edge Scores (labels like 'a0.h0->a1.h0<q>')")
    totals: dict[str, float] = {}
    for label, value in zip(scores.labels, scores.values.abs().tolist(), strict=True):
        e = names.parse_edge(label)
        for node in (e.parent, e.child):
            totals[node] = totals.get(node, 0.0) + value
    return Scores.from_dict(totals, method=scores.method, task=scores.task, metric=scores.metric,
                            meta={**scores.meta, "from_edges": "sum_abs"})


def roc_auc(scores: Scores | Circuit, reference: Circuit | Iterable[str], level: str | None = None,
            by_abs: bool = True, ignore: Iterable[str] = ()) -> float:
    """ROC-AUC of ``scores`` at finding ``reference``'s components (rank-based, ties halved).

    ``level`` defaults to edges when both the scores and the reference have edges, else nodes
    (edge scores are turned into node scores with `node_scores_from_edges`). Every
    reference component must have a score; ``input`` / ``logits`` are left out at node level.
    ``ignore``: components of that level left out of both the scores and the reference (e.g.
    reference edges an ablation cannot see, zoo cards' ``mean_ablation_invisible_edges``).

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> scores = ck.eap_ig(model, ck.zoo_task("induction-handbuilt", model), steps=3, progress=False)
        >>> card = ck.zoo_card("induction-handbuilt")
        >>> invisible = card.evidence["mean_ablation_invisible_edges"]  # no mean ablation can see these
        >>> ck.roc_auc(scores, ck.reference_circuit(card), ignore=invisible)
        1.0
    """
    if isinstance(scores, Circuit):
        scores = scores.scores()
    ref_edges = _members(reference, "edge")
    level = level or ("edge" if scores.is_edge and ref_edges else "node")
    if level == "edge":
        if not scores.is_edge:
            raise InputError("edge-level ROC-AUC needs edge Scores; pass level='node' to compare node scores")
        ref = ref_edges
    elif level == "node":
        ref = _members(reference, "node")
        if scores.is_edge:
            scores = node_scores_from_edges(scores)
        scores = scores.subset([x for x in scores.labels if x not in _ENDPOINTS])
    else:
        raise InputError(f"level must be 'edge' or 'node', got {level!r}")
    ignored = set(ignore)
    if ignored:
        ref = ref - ignored
        scores = scores.subset([x for x in scores.labels if x not in ignored])
    if not ref:
        raise InputError(f"the reference circuit has no {level}s; pass the other level")
    missing = sorted(ref - set(scores.labels))
    if missing:
        raise InputError(f"reference components without a score: {missing[:5]}; score the full model graph "
                         "(every node or edge) before computing ROC-AUC")
    values = scores.values.abs() if by_abs else scores.values
    positive = torch.tensor([label in ref for label in scores.labels])
    return rank_auc(values, positive)


def overlap_matrix(circuits: Mapping[str, Circuit | Iterable[str]], level: str = "node",
                   measure: str = "jaccard"):
    """Pairwise component overlap of several circuits (e.g. one per task) as a DataFrame.

    ``measure``: ``"jaccard"`` (|A ∩ B| / |A ∪ B|), ``"overlap"`` (|A ∩ B| / min(|A|, |B|)),
    ``"shared"`` (|A ∩ B|) or ``"fraction"`` (row's share of its components found in the column).

    Examples:
        >>> import circuitkit as ck
        >>> circuits = {"ioi": ["a0.h1", "a1.h0", "a2.h3"], "induction": ["a0.h1", "a1.h0"],
        ...             "other": ["a2.h2"]}
        >>> ck.overlap_matrix(circuits).round(2)  # Jaccard index of their heads
                    ioi  induction  other
        ioi        1.00       0.67    0.0
        induction  0.67       1.00    0.0
        other      0.00       0.00    1.0
    """
    import pandas as pd

    measures = {
        "jaccard": lambda a, b: len(a & b) / len(a | b) if a | b else 0.0,
        "overlap": lambda a, b: len(a & b) / min(len(a), len(b)) if a and b else 0.0,
        "shared": lambda a, b: float(len(a & b)),
        "fraction": lambda a, b: len(a & b) / len(a) if a else 0.0,
    }
    if measure not in measures:
        raise InputError(f"unknown overlap measure {measure!r}; choose one of {sorted(measures)}")
    if level not in ("node", "edge"):
        raise InputError(f"level must be 'node' or 'edge', got {level!r}")
    if len(circuits) < 2:
        raise InputError("overlap_matrix needs at least two circuits, e.g. {'ioi': c1, 'colored-objects': c2}")
    sets = {name: _members(c, level) for name, c in circuits.items()}
    fn = measures[measure]
    labels = list(sets)
    return pd.DataFrame([[fn(sets[a], sets[b]) for b in labels] for a in labels], index=labels, columns=labels)


def shared_components(circuits: Mapping[str, Circuit | Iterable[str]], level: str = "node"):
    """One row per component with the circuits it belongs to (a DataFrame of booleans, plus ``n``)."""
    import pandas as pd

    sets = {name: _members(c, level) for name, c in circuits.items()}
    everything = names.sort_nodes(set().union(*sets.values())) if level == "node" else sorted(set().union(*sets.values()))
    frame = pd.DataFrame({name: [c in s for c in everything] for name, s in sets.items()}, index=everything)
    frame["n"] = frame.sum(axis=1)
    return frame
