"""Position-resolved circuits of heads and MLPs: evaluation, pruning, export, rendering, and the
hand-built induction model's circuit known by construction at each token."""

import pytest

from circuitkit import attribution, names
from circuitkit.circuit import (
    Circuit,
    discover,
    evaluate,
    faithfulness_curve,
    load_circuit,
    roc_auc,
    save_circuit,
)
from circuitkit.cli import main
from circuitkit.tasks.builders import induction
from circuitkit.viz import circuit_figure
from circuitkit.zoo import load_zoo_model, zoo_card, zoo_task
from circuitkit.zoo.handbuilt import induction_circuit_by_pos

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def task(word_tokenizer):
    return induction(word_tokenizer, n_prompts=4, seq_len=4, seed=0)


@pytest.fixture(scope="module")
def handbuilt():
    model = load_zoo_model("induction-handbuilt")
    return model, zoo_task("induction-handbuilt", model), zoo_card("induction-handbuilt")


@pytest.fixture(scope="module")
def handbuilt_scores(handbuilt):
    model, task, _ = handbuilt
    return attribution.eap_ig(model, task, steps=5, progress=False, by_pos=True)


def test_every_position_of_a_circuit_evaluates_as_the_circuit(tiny_model, task):
    scores = attribution.eap(tiny_model, task, progress=False)
    circuit = Circuit.from_scores(scores, **Circuit.for_model(tiny_model)).top_k(25)
    n_pos = task.clean.shape[1]
    spread = Circuit.from_nodes_edges(edges=[names.edge_at(e, p) for e in circuit.edges for p in range(n_pos)],
                                      **Circuit.for_model(tiny_model))
    plain, by_pos = evaluate(tiny_model, task, circuit), evaluate(tiny_model, task, spread)
    assert by_pos.n_model_edges == n_pos * plain.n_model_edges and by_pos.n_edges == n_pos * plain.n_edges
    assert by_pos.faithfulness == pytest.approx(plain.faithfulness, abs=1e-5)
    assert by_pos.completeness == pytest.approx(plain.completeness, abs=1e-5)
    assert abs(plain.faithfulness) > 0.01 and abs(plain.faithfulness - 1) > 0.01  # neither nothing nor everything
    # a node circuit at every position keeps the same edges as the node circuit
    nodes = ["a0.h1", "a1.h2"]
    node_plain = evaluate(tiny_model, task, Circuit.from_nodes_edges(nodes))
    node_spread = evaluate(tiny_model, task, Circuit.from_nodes_edges([names.with_pos(n, p) for n in nodes
                                                                       for p in range(n_pos)]))
    assert node_spread.faithfulness == pytest.approx(node_plain.faithfulness, abs=1e-5)
    assert node_spread.completeness == pytest.approx(node_plain.completeness, abs=1e-5)


def test_pruning_follows_attention_across_positions():
    edges = ["input@2->a0.h0@2<v>", "a0.h0@5->logits@5",  # a0.h0 reads at 2, writes at 5: attention joins them
             "input@6->a0.h1@6<v>", "a0.h1@4->logits@4"]  # a head cannot write before it reads
    pruned = Circuit.from_nodes_edges(edges=edges, n_layers=1, n_heads=2, has_mlp=False).prune_dangling()
    assert pruned.edges == ["input@2->a0.h0@2<v>", "a0.h0@5->logits@5"]


def test_a_position_resolved_circuit_round_trips_and_renders(handbuilt, handbuilt_scores, tmp_path):
    model, task, _ = handbuilt
    circuit = discover(model, task, "eap-ig", by_pos=True, top_k=6, scores=handbuilt_scores)
    for suffix in (".json", ".graphml"):
        path = save_circuit(circuit, tmp_path / f"c{suffix}")
        assert load_circuit(path) == circuit
    with pytest.raises(ValueError, match="positions"):  # MIB's graphs hold whole heads only
        save_circuit(circuit, tmp_path / "c.mib.json", "mib")
    fig = circuit_figure(circuit)
    tokens = circuit.meta["example_prompt"]["prompt_tokens"]
    assert list(fig.layout.xaxis.ticktext)[10] == f"{tokens[10]}<br>@10"  # the token blocks are labelled
    links = [t for t in fig.data if t.name and t.name.startswith("attention")]
    assert len(links) == 1 and None in links[0].x  # a1.h0 reads k / v at 10 and writes at 19


def test_discovery_recovers_the_induction_circuit_at_each_token(handbuilt, handbuilt_scores):
    model, task, card = handbuilt
    reference = induction_circuit_by_pos(task)
    end = task.clean.shape[1] - 1
    assert names.edge_at("a1.h0->logits", end) in reference and len(reference) == 7
    n_pos = task.clean.shape[1]
    hidden = [names.edge_at(e, p) for e in card.evidence["mean_ablation_invisible_edges"] for p in range(n_pos)]
    scores = handbuilt_scores
    assert roc_auc(scores, reference, ignore=hidden) >= 0.99
    assert evaluate(model, task, Circuit.from_nodes_edges(edges=reference)).faithfulness == pytest.approx(1.0, abs=1e-3)
    # the circuit discovery prunes to: the reference's mean-visible edges, faithful
    circuit = discover(model, task, "eap-ig", steps=5, by_pos=True, scores=scores)
    assert set(circuit.edges) == set(reference) - set(hidden)
    assert circuit.meta["faithfulness"] >= 0.99 and circuit.meta["by_pos"]
    # MIB's curve on the position-resolved graph: the top 0.5 % (8 of 1620) already suffice
    curve = faithfulness_curve(model, task, scores, ks=(0.5, 100))
    assert list(curve["n_edges"]) == [8, 1620] and curve["f_signed"].min() >= 0.99


def test_cli_discovers_a_position_resolved_circuit(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["discover", "zoo:induction-handbuilt", "--method", "eap-ig", "--steps", "3", "--by-pos",
                 "--top-k", "5", "--out", str(out), "--no-progress"]) == 0
    circuit = load_circuit(out)
    assert len(circuit.edges) == 5 and all(names.edge_position(e)[1] is not None for e in circuit.edges)
    assert circuit.meta["by_pos"] and circuit.meta["faithfulness"] >= 0.99
    assert main(["discover", "zoo:induction-handbuilt", "--method", "acdc", "--by-pos", "--out", str(out)]) != 0
    assert "by_pos" in capsys.readouterr().err
    assert load_circuit(out) == circuit  # nothing written on error
