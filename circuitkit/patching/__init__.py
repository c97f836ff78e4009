"""circuitkit.patching: exact activation and path patching, direct logit attribution, logit lens,
attribution patching, EAP and EAP-IG over the residual-stream edge graph (``graph.py``)."""

from circuitkit.patching.activation import (
    TARGETS,
    activation_patching,
    patch_head_sets,
    valid_targets,
)
from circuitkit.patching.attribution import attribution_patching, eap, eap_ig, exact_edge_patching
from circuitkit.patching.graph import (
    GraphIndex,
    ablation_source,
    graph_edges,
    graph_index,
    graph_nodes,
    node_outputs,
    run_with_edges,
    run_with_mask,
)
from circuitkit.patching.logit_lens import direct_logit_attribution, logit_lens
from circuitkit.patching.path import RECEIVER_INPUTS, path_patching

__all__ = [
    "TARGETS",
    "RECEIVER_INPUTS",
    "activation_patching",
    "patch_head_sets",
    "valid_targets",
    "path_patching",
    "direct_logit_attribution",
    "logit_lens",
    "attribution_patching",
    "eap",
    "eap_ig",
    "exact_edge_patching",
    "GraphIndex",
    "ablation_source",
    "graph_edges",
    "graph_index",
    "graph_nodes",
    "node_outputs",
    "run_with_edges",
    "run_with_mask",
]
