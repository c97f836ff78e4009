"""Feature-circuit discovery scored against features known by construction (induction-handbuilt)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from circuitkit.circuit.compare import rank_auc
from circuitkit.circuit.features import evaluate_feature_circuit, graph_circuit, top_features
from circuitkit.models import load_model
from circuitkit.models.zoo_store import zoo_task
from circuitkit.sae.graph import feature_graph
from circuitkit.zoo.feature_saes import (
    SITES,
    build_induction_saes,
    induction_feature_circuit,
    load_induction_saes,
)

CHECKOUT_MODEL = Path(__file__).resolve().parents[2] / "data" / "zoo" / "induction-handbuilt"


@pytest.fixture(scope="module")
def model():
    return load_model("zoo:induction-handbuilt", device="cpu")


@pytest.fixture(scope="module")
def task(model):
    return zoo_task("induction-handbuilt", model).subset(range(16))


@pytest.fixture(scope="module")
def saes():
    return load_induction_saes(folder=CHECKOUT_MODEL / "saes")


@pytest.fixture(scope="module")
def truth(model, task):
    return induction_feature_circuit(task, model.cfg.d_vocab)


@pytest.fixture(scope="module")
def graph(model, saes, task):
    return feature_graph(model, saes, task, method="ig", steps=4, node_threshold=1e-3, progress=False)


def test_shipped_saes_are_the_analytic_ones_and_the_card_records_the_circuit(model, saes):
    built = build_induction_saes()
    assert list(saes) == list(SITES)
    for hook in SITES:
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            torch.testing.assert_close(getattr(saes[hook], name), getattr(built[hook], name))
    card = json.loads((CHECKOUT_MODEL / "card.json").read_text())
    record = card["evidence"]["feature_circuit"]
    nodes, edges = induction_feature_circuit(zoo_task("induction-handbuilt", model), model.cfg.d_vocab)
    assert record["sites"] == list(SITES) and record["nodes"] == nodes and record["edges"] == edges


def test_discovery_recovers_the_known_features_and_edges(graph, truth):
    nodes, edges = truth
    true_nodes, true_edges = set(nodes), set(edges)
    labels = [n for n in graph.nodes.labels if not n.startswith("input")]
    scores = graph.nodes.as_dict()
    node_auc = rank_auc(torch.tensor([abs(scores[n]) for n in labels]), torch.tensor([n in true_nodes for n in labels]))
    estimated = dict(zip(graph.edges.labels, graph.edges.values.abs().tolist(), strict=True))
    pool = sorted(set(estimated) | true_edges)  # a true edge not estimated counts as scored 0
    edge_auc = rank_auc(torch.tensor([estimated.get(e, 0.0) for e in pool]), torch.tensor([e in true_edges for e in pool]))
    assert node_auc >= 0.95 and edge_auc >= 0.95, (node_auc, edge_auc)
    assert true_edges <= set(estimated)


def test_the_known_circuit_and_the_discovered_one_are_faithful(model, saes, task, graph, truth):
    nodes, _ = truth
    known = evaluate_feature_circuit(model, saes, task, nodes)
    assert known.faithfulness >= 0.9 and known.completeness >= 0.9
    circuit = graph_circuit(graph, model)
    n_true = sum(1 for n in nodes if n.startswith("f"))
    found = top_features(circuit, n_true)
    ev = evaluate_feature_circuit(model, saes, task, found)
    assert ev.faithfulness >= 0.9, ev
    assert len(set(found.nodes) & set(nodes)) >= 0.9 * len(nodes)
    # A circuit missing the key features (PREV at the key position) is not faithful: the check bites.
    no_key = [n for n in nodes if not (n.startswith("f1.resid_pre.") and int(n.split(".")[2].split("@")[0]) >= 36)]
    assert evaluate_feature_circuit(model, saes, task, no_key).faithfulness < 0.5


def test_feature_cards_know_the_constructed_features(model, saes, task):
    from circuitkit.sae import feature_cards

    v = model.cfg.d_vocab
    answer = int(task.clean[0, 2])  # a token that appears in the prompts
    cards = feature_cards(model, saes, task, [f"f1.resid_post.{2 * v + answer}@5", f"f0.resid_pre.{answer}@3"], k=2)
    out, tok = cards[f"f1.resid_post.{2 * v + answer}"], cards[f"f0.resid_pre.{answer}"]
    # OUT[a] is read by W_U as the answer a; TOK[t] fires on t and is not read by W_U
    assert out.boosted["token_id"].iloc[0] == answer and out.boosted["logit"].iloc[0] > 0
    assert (tok.examples["token"] == model.tokenizer.decode([answer])).all()
    assert tok.boosted["logit"].abs().max() == 0
