"""Circuit discovery: score edges and prune (`pipeline`), ACDC
(`acdc_search`), and the exhaustive reference search behind the zoo's
circuits (`exhaustive`)."""

from circuitkit.circuit.discovery.acdc_search import acdc
from circuitkit.circuit.discovery.exhaustive import (
    CircuitSearch,
    EdgeCircuitSearch,
    circuit_recovery,
    find_circuit,
    find_edge_circuit,
)
from circuitkit.circuit.discovery.mask_learning import edge_pruning
from circuitkit.circuit.discovery.methods import (
    DISCOVERY_METHODS,
    DiscoveryMethod,
    discovery_method,
    register,
)
from circuitkit.circuit.discovery.pipeline import LEVELS, METHODS, discover, score_edges

__all__ = ["DISCOVERY_METHODS", "DiscoveryMethod", "LEVELS", "METHODS", "discovery_method", "register", "CircuitSearch", "EdgeCircuitSearch", "acdc", "circuit_recovery", "discover",
           "edge_pruning", "find_circuit", "find_edge_circuit", "score_edges"]
