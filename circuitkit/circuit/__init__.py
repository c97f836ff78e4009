"""Circuits: build from Scores, prune, discover, evaluate, compare, export and render; feature circuits
over spliced SAEs (`circuitkit.circuit.features`)."""

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
from circuitkit.circuit.core import Circuit
from circuitkit.circuit.discovery import METHODS, acdc, discover, edge_pruning, score_edges
from circuitkit.circuit.evaluation import (
    CircuitEvaluation,
    EdgeEvaluator,
    completeness,
    evaluate,
    faithfulness,
    faithfulness_curve,
    smallest_faithful,
)
from circuitkit.circuit.features import (
    EstimateCheck,
    FeatureCircuitEvaluation,
    check_estimates,
    evaluate_feature_circuit,
    feature_circuit,
    graph_circuit,
    top_features,
)
from circuitkit.circuit.io import FORMATS, convert, load_circuit, save_circuit
from circuitkit.circuit.layers import LayerEvaluator, layer_nodes, score_layers
from circuitkit.circuit.published import PUBLISHED, published_circuit
from circuitkit.circuit.routes import cap_by_route, route_widths
from circuitkit.circuit.selection import SELECTIONS, select_edges
from circuitkit.circuit.stability import circuit_stability

__all__ = [
    "FORMATS", "METHODS", "PUBLISHED", "Circuit", "CircuitEvaluation", "EdgeEvaluator", "Overlap", "acdc", "completeness",
    "convert", "discover", "edge_pruning", "evaluate", "faithfulness", "faithfulness_curve", "iou", "load_circuit",
    "node_scores_from_edges", "overlap", "overlap_matrix", "precision", "published_circuit", "rank_auc", "recall", "roc_auc",
    "route_widths", "cap_by_route", "save_circuit", "score_edges", "shared_components", "smallest_faithful",
    "EstimateCheck", "FeatureCircuitEvaluation", "check_estimates", "evaluate_feature_circuit", "feature_circuit",
    "graph_circuit", "top_features", "LayerEvaluator", "layer_nodes", "score_layers",
    "circuit_stability", "SELECTIONS", "select_edges",
]
