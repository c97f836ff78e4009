"""Ablation: one vocabulary of kinds (`kinds`), node ablation of heads and
MLPs (`nodes`) and the residual-stream edge graph with its edge-mask
engine (`edges`)."""

from circuitkit.ablation.edges import (
    GraphIndex,
    ablation_source,
    graph_edges,
    graph_index,
    graph_nodes,
    node_outputs,
    run_with_edges,
    run_with_mask,
)
from circuitkit.ablation.kinds import (
    ABLATION_KINDS,
    NODE_ABLATION_KINDS,
    AblationKind,
    check_kind,
    resample_permutation,
)
from circuitkit.ablation.nodes import AblationResult, ablate, ablation_hooks, run_ablated

# The kinds node ablation (``ablate``) accepts, under the name the public API has always used.
ABLATIONS = NODE_ABLATION_KINDS

__all__ = [
    "ABLATIONS", "ABLATION_KINDS", "NODE_ABLATION_KINDS", "AblationKind", "AblationResult", "GraphIndex",
    "ablate", "ablation_hooks", "ablation_source", "check_kind", "graph_edges", "graph_index", "graph_nodes",
    "node_outputs", "resample_permutation", "run_ablated", "run_with_edges", "run_with_mask",
]
