"""Circuits: build from Scores, prune, discover, evaluate, compare, export and render."""

from circuitkit.circuit.compare import (
    Overlap,
    iou,
    node_scores_from_edges,
    overlap,
    overlap_matrix,
    precision,
    rank_auc,
    recall,
    roc_auc,
    shared_components,
)
from circuitkit.circuit.graph import Circuit
from circuitkit.circuit.io import FORMATS, convert, load_circuit, save_circuit

__all__ = [
    "FORMATS", "Circuit", "Overlap", "convert", "iou", "load_circuit", "node_scores_from_edges", "overlap",
    "overlap_matrix", "precision", "rank_auc", "recall", "roc_auc", "save_circuit", "shared_components",
]
