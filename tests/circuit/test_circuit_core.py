import networkx as nx
import pytest
import torch

from circuitkit import Scores, names
from circuitkit.circuit import Circuit


def edge_scores(n_layers=2, n_heads=2, seed=0):
    edges = names.all_edges(n_layers, n_heads, True)
    values = torch.randn(len(edges), generator=torch.Generator().manual_seed(seed))
    return Scores(values, edges, "eap", task="ioi", metric="logit_diff",
                  meta={"n_layers": n_layers, "n_heads": n_heads, "has_mlp": True})


def test_from_edge_scores_types_every_node_and_edge():
    scores = edge_scores()
    circuit = Circuit.from_scores(scores)
    assert isinstance(circuit.graph, nx.DiGraph)
    assert sorted(circuit.all_edges) == sorted(scores.labels)
    assert set(circuit.all_nodes) == set(names.all_nodes(2, 2, True))
    head = circuit.graph.nodes["a1.h0"]
    assert (head["kind"], head["layer"], head["head"], head["score"], head["in_graph"]) == ("head", 1, 0, None, True)
    label = "a0.h1->a1.h0<k>"
    data = circuit.edge_data(label)
    assert data["qkv"] == "k" and data["score"] == pytest.approx(scores[label])
    assert data["sign"] == (1 if scores[label] > 0 else -1)
    assert (data["method"], data["task"]) == ("eap", "ioi")
    # q, k and v edges between the same two nodes are distinct
    assert circuit.graph.number_of_edges("a0.h1", "a1.h0") == 3
    assert circuit.graph.graph["n_layers"] == 2 and circuit.scores().as_dict() == pytest.approx(scores.as_dict())


def test_from_node_scores_and_reference():
    grid = torch.tensor([[0.5, -2.0], [0.0, 1.0]])
    circuit = Circuit.from_scores(Scores.from_head_grid(grid, "patching", task="induction"))
    assert circuit.level == "node" and circuit.graph.number_of_edges() == 0
    assert circuit.graph.nodes["a0.h1"]["sign"] == -1 and circuit.graph.nodes["a1.h0"]["sign"] == 0
    assert circuit.top_k(2).nodes == ["a0.h1", "a1.h1"]
    ref = Circuit.from_nodes_edges(["a1.h0"], ["a0.h0->a1.h0<k>", "a1.h0->logits"])
    assert ref.nodes == ["a0.h0", "a1.h0", "logits"] and len(ref) == 2
    assert "a0.h0->a1.h0<k>" in ref and "a0.h0->a1.h0<q>" not in ref


def test_threshold_top_k_and_dangling_pruning():
    scores = Scores.from_dict({
        "input->a0.h0<q>": 3.0, "a0.h0->logits": -2.5,  # a path input -> logits
        "input->a1.h1<v>": 4.0,  # strongest, but a1.h1 reaches no logits: dangling
        "a0.h0->a1.h0<k>": 0.1,
    }, "eap")
    circuit = Circuit.from_scores(scores)
    kept = circuit.threshold(1.0)
    assert kept.edges == ["input->a0.h0<q>", "a0.h0->logits"]
    assert "a1.h1" not in kept.nodes and "a1.h1" in kept.graph  # pruned, but kept with its score
    unpruned = circuit.threshold(1.0, prune=False)
    assert set(unpruned.edges) == {"input->a0.h0<q>", "a0.h0->logits", "input->a1.h1<v>"}
    assert circuit.top_k(1, prune=False).edges == ["input->a1.h1<v>"]
    assert circuit.top_k(1).edges == []  # the single strongest edge is dangling
    assert circuit.top_k(1, by_abs=False, prune=False).edges == ["input->a1.h1<v>"]
    assert circuit.top_k(4).edges == kept.edges  # a0.h0 -> a1.h0 and input -> a1.h1 lead nowhere
    # the original is untouched
    assert len(circuit.edges) == 4


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="empty Scores"):
        Circuit.from_scores(Scores(torch.zeros(0), [], "x"))
    with pytest.raises(ValueError, match="at least one node or edge"):
        Circuit.from_nodes_edges([], [])
    with pytest.raises(ValueError, match="unknown component name"):
        Circuit.from_nodes_edges(["attn3"])
    with pytest.raises(ValueError, match="non-negative integer"):
        Circuit.from_nodes_edges(["a0.h0"]).top_k(-1)
    with pytest.raises(KeyError, match="edges not in this circuit"):
        Circuit.from_scores(edge_scores()).with_members(["a0.h0->a9.h0<q>"])
    graph = nx.MultiDiGraph()
    graph.add_node("a0.h0", kind="mlp")
    with pytest.raises(ValueError, match="lacks attributes"):
        Circuit(graph)
    circuit = Circuit.from_nodes_edges(["a0.h0"])
    circuit.graph.nodes["a0.h0"]["score"] = [1.0]
    with pytest.raises(ValueError, match="attributes must be str, int"):
        circuit.validate()
