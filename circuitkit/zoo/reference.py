"""The circuits the zoo's cards record as true, as `Circuit` objects."""

from __future__ import annotations

from circuitkit.circuit.core import Circuit
from circuitkit.errors import InputError
from circuitkit.models.zoo_store import ZooCard, zoo_card

__all__ = ["reference_circuit"]


def reference_circuit(card: str | ZooCard) -> Circuit:
    """The reference circuit recorded on a zoo card (a zoo name or a `ZooCard`): its nodes and
    edges, in graph, with the card's model shape.

    Examples:
        >>> import circuitkit as ck
        >>> ck.reference_circuit("induction-handbuilt").nodes
        ['input', 'a0.h0', 'a1.h0', 'logits']
    """
    card = zoo_card(card) if isinstance(card, str) else card
    if not card.circuit_nodes and not card.circuit_edges:
        raise InputError(f"zoo model {card.name!r} records no reference circuit in its card")
    cfg = card.config
    return Circuit.from_nodes_edges(card.circuit_nodes, card.circuit_edges, method="reference",
                                    task=card.task.get("builder", ""), n_layers=cfg.get("n_layers"),
                                    n_heads=cfg.get("n_heads"), has_mlp=not cfg.get("attn_only", False))
