"""The one evidence schema of zoo cards: how a card's reference circuit was established and the
figures behind it, the same keys for hand-built and trained models.

Every card's ``evidence`` holds `NODE_KEYS`:

* ``method`` — ``"construction"`` (hand-built) or ``"exhaustive ablation"`` (trained);
* ``ablation`` — what ablated components read (mean over the task's clean prompts);
* ``clean_metric`` / ``corrupted_metric`` — the task metric of the intact model on clean and on
  corrupted prompts;
* ``per_component_recovered`` — for every head and MLP, the recovered share when it alone is ablated;
* ``circuit_only_recovered`` / ``circuit_ablated_recovered`` — everything outside the circuit
  ablated, and the circuit's heads / MLPs ablated.

Trained cards add `EDGE_KEYS` (the edge-level search); models may add their own keys
(``retrieval_heads``, ``previous_token_heads``, ``mean_ablation_invisible_edges`` ...).
"""

from __future__ import annotations

from typing import Any

from circuitkit.circuit.discovery.exhaustive import CircuitSearch, EdgeCircuitSearch

MEAN_ABLATION = "mean over the task's clean prompts"
NODE_KEYS = ("method", "ablation", "clean_metric", "corrupted_metric", "per_component_recovered",
             "circuit_only_recovered", "circuit_ablated_recovered")
EDGE_KEYS = ("edges", "edge_effects", "edge_circuit_faithfulness", "edge_circuit_ablated_faithfulness")


def node_evidence(method: str, clean: float, corrupted: float, per_component: dict[str, float],
                  circuit_only: float, circuit_ablated: float) -> dict[str, Any]:
    """The `NODE_KEYS` of a card, rounded for the card."""
    return {
        "method": method,
        "ablation": MEAN_ABLATION,
        "clean_metric": round(clean, 4),
        "corrupted_metric": round(corrupted, 4),
        "per_component_recovered": {k: round(v, 4) for k, v in per_component.items()},
        "circuit_only_recovered": round(circuit_only, 4),
        "circuit_ablated_recovered": round(circuit_ablated, 4),
    }


def trained_evidence(search: CircuitSearch, edge_search: EdgeCircuitSearch) -> dict[str, Any]:
    """A trained card's evidence from its node and edge searches."""
    return {
        **node_evidence("exhaustive ablation", search.clean, search.baseline, search.per_component,
                        search.circuit_only, search.circuit_ablated),
        "edges": ("established by exact single-edge mean ablation of every model edge "
                  "(effect = metric change / (full - all edges ablated)); the node circuit's edges are "
                  "kept in order of |effect| until the circuit alone is faithful, then pruned while it stays so"),
        "edge_effects": {k: round(v, 4) for k, v in edge_search.effects.items()},
        "edge_circuit_faithfulness": round(edge_search.faithfulness, 4),
        "edge_circuit_ablated_faithfulness": round(edge_search.ablated_faithfulness, 4),
    }


def missing_evidence(card) -> list[str]:
    """The schema keys ``card``'s evidence lacks (trained cards: edge keys too)."""
    required = NODE_KEYS + (EDGE_KEYS if card.construction == "trained" else ())
    return [key for key in required if key not in card.evidence]
