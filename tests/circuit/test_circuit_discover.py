# ruff: noqa: F811  (pytest fixtures imported from circuit_fixtures are parameters here)
import pytest
from circuit_fixtures import exact_scores, known_model, known_task  # noqa: F401  (fixtures)

from circuitkit.circuit import Circuit, overlap, roc_auc
from circuitkit.circuit.discovery import acdc, discover

LIVE_HEADS = ["a0.h0", "a1.h1"]  # see conftest.dead_head_model
DEAD_HEADS = ["a0.h1", "a1.h0"]


def test_exact_scores_find_the_live_heads(exact_scores):
    for label, value in exact_scores.as_dict().items():
        if any(head in label for head in DEAD_HEADS):
            assert value == pytest.approx(0.0, abs=1e-5), label
    assert roc_auc(exact_scores, Circuit.from_nodes_edges(LIVE_HEADS), level="node") == 1.0


def test_acdc_recovers_the_live_heads(known_model, known_task):
    circuit = acdc(known_model, known_task, threshold=1e-4)
    assert circuit.method == "acdc" and circuit.meta["threshold"] == 1e-4
    assert circuit.nodes == ["input", *LIVE_HEADS, "logits"]
    view = circuit.subgraph()  # every kept edge lies on an input -> logits path
    for parent, child in view.edges():
        assert parent == "input" or view.in_degree(parent) > 0
        assert child == "logits" or view.out_degree(child) > 0
    # a huge threshold removes everything
    assert acdc(known_model, known_task, threshold=1e3).edges == []
    with pytest.raises(ValueError, match="ACDC metric"):
        acdc(known_model, known_task, metric="l2")


def test_discover_prunes_to_a_faithful_circuit(known_model, known_task):
    circuit = discover(known_model, known_task, "exact", target=0.9)
    assert circuit.meta["faithfulness"] >= 0.9 and circuit.meta["discovery"] == "exact"
    assert overlap(circuit, LIVE_HEADS).precision == 1.0
    top = discover(known_model, known_task, "exact", top_k=4)
    assert len(top.edges) <= 4
    with pytest.raises(ValueError, match="unknown discovery method"):
        discover(known_model, known_task, "magic")
    with pytest.raises(ValueError, match="not both"):
        discover(known_model, known_task, "exact", top_k=3, threshold=0.1)


def test_discover_with_eap_ig(known_model, known_task):
    circuit = discover(known_model, known_task, "eap-ig", steps=3, ablation="corrupted")
    assert circuit.method == "eap-ig" and circuit.meta["faithfulness"] >= 0.9
    scores = circuit.scores("edge")
    assert len(scores) == 29  # every edge of the model was scored, the circuit keeps a few
    assert roc_auc(scores, Circuit.from_nodes_edges(LIVE_HEADS), level="node") == 1.0
    assert overlap(circuit, LIVE_HEADS).precision == 1.0


def test_discover_with_eap_ig_over_activations(known_model, known_task):
    from circuitkit.attribution import eap_ig
    from circuitkit.circuit.discovery import score_edges

    circuit = discover(known_model, known_task, "eap-ig", steps=3, ablation="mean", interpolate="activations",
                       route_cap=False)
    assert circuit.meta["interpolate"] == "activations" and circuit.meta["faithfulness"] >= 0.9
    assert overlap(circuit, LIVE_HEADS).precision == 1.0
    expected = eap_ig(known_model, known_task, steps=3, ablation="mean", interpolate="activations", progress=False)
    assert circuit.scores("edge").as_dict() == pytest.approx(expected.as_dict())
    inputs = score_edges(known_model, known_task, "eap-ig", steps=3, ablation="mean")
    assert inputs.as_dict() != pytest.approx(expected.as_dict())  # the two paths do differ here


def test_discover_ranks_by_route_capped_scores_unless_told_not_to(known_model, known_task, exact_scores):
    from circuitkit.circuit import cap_by_route

    capped = discover(known_model, known_task, "exact", top_k=4)
    raw = discover(known_model, known_task, "exact", top_k=4, route_cap=False)
    assert capped.meta["route_cap"] is True and raw.meta["route_cap"] is False
    assert raw.scores("edge").as_dict() == pytest.approx(exact_scores.as_dict())
    assert capped.scores("edge").as_dict() == pytest.approx(cap_by_route(exact_scores).as_dict())


def test_acdc_scores_every_edge_of_the_model(known_model, known_task):
    from circuitkit.ablation.edges import graph_edges
    from circuitkit.circuit.routes import cap_by_route

    circuit = acdc(known_model, known_task, threshold=1e-4)
    scores = circuit.scores("edge")
    every = graph_edges(known_model)
    assert sorted(scores.labels) == sorted(every)  # untried edges are scored too, not dropped
    untried = [e for e in every if not circuit.edge_data(e)["tried"]]
    assert untried and circuit.meta["untried"] == len(untried)  # the dead heads' inputs are never tried
    assert all(scores.as_dict()[e] == 0.0 and e not in circuit.edges for e in untried)
    kept = set(circuit.edges)
    assert all(scores.as_dict()[e] >= 1e-4 for e in kept)
    # the AUC ranks all edges: the kept ones against the reference made of exactly them is 1
    assert roc_auc(scores, kept, level="edge", by_abs=False) == 1.0
    reference = Circuit.from_nodes_edges(LIVE_HEADS)
    assert roc_auc(scores, reference, level="node", by_abs=False) == 1.0
    assert len(cap_by_route(scores)) == len(every)
