"""Circuit discovery: score edges and prune (:mod:`~circuitkit.circuit.discover.pipeline`), ACDC
(:mod:`~circuitkit.circuit.discover.acdc`), and the exhaustive reference search behind the zoo's
circuits (:mod:`~circuitkit.circuit.discover.exhaustive`)."""

from circuitkit.circuit.discover.acdc import acdc
from circuitkit.circuit.discover.edge_pruning import edge_pruning
from circuitkit.circuit.discover.exhaustive import (
    CircuitSearch,
    EdgeCircuitSearch,
    circuit_recovery,
    find_circuit,
    find_edge_circuit,
)
from circuitkit.circuit.discover.pipeline import LEVELS, METHODS, discover, score_edges

__all__ = ["LEVELS", "METHODS", "CircuitSearch", "EdgeCircuitSearch", "acdc", "circuit_recovery", "discover",
           "edge_pruning", "find_circuit", "find_edge_circuit", "score_edges"]
