import math
import random

import networkx as nx
import pytest
import torch

from circuitkit import names
from circuitkit.circuit import cap_by_route, roc_auc, route_widths
from circuitkit.scores import Scores
from circuitkit.zoo import reference_circuit


def test_cap_by_route_by_hand():
    scores = Scores.from_dict({
        "input->a0.h0<q>": -0.9,   # large, but a0.h0 reaches the logits at most through 0.3
        "a0.h0->logits": 0.1,
        "a0.h0->a1.h0<k>": 0.8,
        "a1.h0->logits": 0.3,
        "input->a0.h1<v>": 0.5,    # below a0.h1's route (0.6): unchanged
        "a0.h1->logits": 0.6,
        "input->logits": 0.2,
    }, method="test")
    widths = route_widths(scores)
    assert widths["logits"] == math.inf
    assert widths["a1.h0"] == pytest.approx(0.3)
    assert widths["a0.h0"] == pytest.approx(0.3)  # max(0.1, min(0.8, 0.3))
    assert widths["input"] == pytest.approx(0.5)  # via a0.h1: min(0.5, 0.6)
    capped = cap_by_route(scores).as_dict()
    assert capped["input->a0.h0<q>"] == pytest.approx(-0.3)  # sign kept
    assert capped["input->a0.h1<v>"] == pytest.approx(0.5)
    for label in ("a0.h0->logits", "a1.h0->logits", "input->logits", "a0.h1->logits"):
        assert capped[label] == pytest.approx(scores.as_dict()[label])
    assert cap_by_route(scores).meta["route_capped"] is True


def _widest_route_by_enumeration(scores: Scores, node: str) -> float:
    """The slow, obvious path: every simple route from ``node`` to the logits, its weakest edge."""
    graph = nx.MultiDiGraph()
    for label, value in zip(scores.labels, scores.values.abs().tolist(), strict=True):
        e = names.parse_edge(label)
        graph.add_edge(e.parent, e.child, width=value)
    if node == "logits":
        return math.inf
    best = 0.0
    for route in nx.all_simple_edge_paths(graph, node, "logits"):
        best = max(best, min(graph.edges[u, v, k]["width"] for u, v, k in route))
    return best


def test_route_widths_match_enumerating_every_route():
    edges = names.all_edges(3, 2, has_mlp=True)
    rng = random.Random(0)
    scores = Scores(torch.tensor([rng.uniform(-1, 1) for _ in edges]), edges, method="random")
    widths = route_widths(scores)
    for node in names.all_nodes(3, 2, has_mlp=True):
        assert widths[node] == pytest.approx(_widest_route_by_enumeration(scores, node)), node
    capped = cap_by_route(scores)
    for label, raw, new in zip(edges, scores.values.tolist(), capped.values.tolist(), strict=True):
        child = names.parse_edge(label).child
        assert new == pytest.approx(math.copysign(min(abs(raw), widths[child]), raw))


def test_route_cap_needs_finite_edge_scores():
    with pytest.raises(ValueError, match="edge Scores"):
        cap_by_route(Scores.from_dict({"a0.h0": 1.0}, method="x"))
    with pytest.raises(ValueError, match="finite"):
        cap_by_route(Scores.from_dict({"a0.h0->logits": float("nan")}, method="x"))


def test_route_cap_ranks_the_reference_edges_of_a_trained_model():
    """induction-trained's largest exact single-edge effects are the q / k inputs of a0.h0, a head
    the circuit does not need (mean-ablating them alone costs 0.7 of the behaviour); capped by
    their route they fall below the reference edges, and the exact effects rank the reference
    edges perfectly."""
    from circuitkit.zoo import zoo_card

    card = zoo_card("induction-trained")
    effects = Scores.from_dict(card.evidence["edge_effects"], method="exact")
    reference = reference_circuit(card)
    raw, capped = roc_auc(effects, reference, level="edge"), roc_auc(cap_by_route(effects), reference, level="edge")
    assert raw < 0.95
    assert capped == 1.0
    top = max(effects.as_dict().items(), key=lambda kv: abs(kv[1]))[0]
    assert names.parse_edge(top).child not in reference.nodes
    assert {label for label, _ in cap_by_route(effects).top(len(reference.edges))} == set(reference.edges)
