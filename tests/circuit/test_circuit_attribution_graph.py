"""The attribution-graph export against circuit-tracer's own data model and what its viewer reads.

circuit-tracer (PyPI) 0.5 pins ``transformers<=4.57.3``, which this project's TransformerLens 3
cannot use, so it is not a ``dev`` extra: install it with ``pip install --no-deps circuit-tracer``
(``circuit_tracer.frontend.graph_models`` needs only pydantic). Outside CI the validation tests
skip without it; with ``CI`` set they fail.
"""

# ruff: noqa: F811  (pytest fixtures imported from circuit_fixtures are parameters here)
import json
import os

import browser
import pytest
import torch
from circuit_fixtures import known_model, known_task  # noqa: F401  (fixtures)

from circuitkit import Scores, names
from circuitkit.circuit import Circuit, load_circuit, save_circuit
from circuitkit.circuit.io import example_prompt, from_attribution_graph, to_attribution_graph
from circuitkit.circuit.io.attribution_graph import cantor_pair, cantor_unpair

try:
    from circuit_tracer.frontend import graph_models
except ImportError:
    if os.environ.get("CI"):
        raise
    graph_models = None
tracer = pytest.mark.skipif(graph_models is None, reason=(
    "circuit-tracer is not installed; it pins transformers<=4.57.3, so install it without its dependencies: "
    "pip install --no-deps circuit-tracer"))

EXAMPLE = {"prompt": "A B C A B", "prompt_tokens": ["A", " B", " C", " A", " B"], "token_ids": [3, 4, 5, 3, 4],
           "logits": [{"token": " C", "token_id": 5, "prob": 0.8125}]}


@pytest.fixture
def circuit():
    edges = names.all_edges(2, 2, True)
    values = torch.randn(len(edges), generator=torch.Generator().manual_seed(3))
    c = Circuit.from_scores(Scores(values, edges, "eap-ig", task="induction",
                                   meta={"n_layers": 2, "n_heads": 2, "has_mlp": True})).top_k(20, prune=False)
    c.meta["example_prompt"] = EXAMPLE
    assert len(c.edges) < len(c.all_edges) and any(names.parse_edge(e).qkv for e in c.edges)
    return c


def _viewer_checks(graph: dict) -> None:
    """What circuit-tracer's viewer (frontend/assets/attribution_graph/util-cg.js, formatData) does
    with a file: it drops every featureId (layer_feature_ctx) seen more than 2/3 x the prompt's
    token count times, and parses the logit's probability and token from its clerp."""
    tokens = graph["metadata"]["prompt_tokens"]
    feature_ids = [f"{n['layer']}_{n['feature']}_{n['ctx_idx']}" for n in graph["nodes"]]
    assert all(feature_ids.count(f) <= len(tokens) * 2 / 3 for f in feature_ids), "the viewer would hide nodes"
    for node in graph["nodes"]:
        if node["feature_type"] == "logit":
            assert float(node["clerp"].split("(p=")[1].split(")")[0]) == pytest.approx(node["token_prob"], abs=1e-3)
            assert node["clerp"].split('"')[1]
    ids = {n["node_id"] for n in graph["nodes"]}
    assert len(ids) == len(graph["nodes"]) and all({link["source"], link["target"]} <= ids for link in graph["links"])


@tracer
def test_export_validates_against_circuit_tracer(circuit):
    graph = to_attribution_graph(circuit)
    model = graph_models.Model.model_validate(json.loads(json.dumps(graph)))
    assert model.metadata.prompt_tokens == EXAMPLE["prompt_tokens"] and model.metadata.transcoder_list == []
    _viewer_checks(graph)
    # only in-graph nodes; one link per node pair, its weight the sum of the q/k/v edges' -score
    assert {n["circuitkit"]["id"] for n in graph["nodes"]} == set(circuit.nodes)
    pairs = {(names.parse_edge(e).parent, names.parse_edge(e).child) for e in circuit.edges}
    assert len(graph["links"]) == len(pairs)
    by_id = {n["node_id"]: n["circuitkit"]["id"] for n in graph["nodes"]}
    for link in graph["links"]:
        parent, child = by_id[link["source"]], by_id[link["target"]]
        inputs = [e for e in circuit.edges if names.parse_edge(e).parent == parent and names.parse_edge(e).child == child]
        assert link["weight"] == pytest.approx(-sum(circuit.edge_data(e)["score"] for e in inputs))
        for e in inputs:
            if names.parse_edge(e).qkv:
                assert link[names.parse_edge(e).qkv] == -circuit.edge_data(e)["score"]
    logit = next(n for n in graph["nodes"] if n["feature_type"] == "logit")
    assert logit["clerp"] == 'Output " C" (p=0.812)' and logit["feature"] == 5 and logit["ctx_idx"] == 4


@tracer
def test_save_writes_the_viewer_index(circuit, tmp_path):
    path = save_circuit(circuit, tmp_path / "induction-demo.json", "attribution-graph")
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["induction-demo"]  # the viewer loads {slug}.json
    graph_models.Metadata.model_validate(index["graphs"][0])
    save_circuit(circuit, tmp_path / "second.json", "attribution-graph")
    save_circuit(circuit.top_k(4), tmp_path / "induction-demo.json", "attribution-graph")  # replaces its entry
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["second", "induction-demo"]
    save_circuit(circuit, path, "attribution-graph")
    assert load_circuit(path) == circuit  # pruned elements ride along in metadata.circuitkit


def test_export_needs_real_prompt_tokens(circuit):
    circuit.meta.pop("example_prompt")
    with pytest.raises(ValueError, match="prompt_tokens"):
        to_attribution_graph(circuit)
    graph = to_attribution_graph(circuit, prompt_tokens=["x", "y", "z"], logit=("z", 0.25))
    assert graph["metadata"]["prompt"] == "xyz"
    assert next(n for n in graph["nodes"] if n["feature_type"] == "logit")["clerp"] == 'Output "z" (p=0.250)'
    with pytest.raises(ValueError, match="past the prompt"):
        to_attribution_graph(Circuit.from_nodes_edges(["a0.h0@7"], n_layers=1, n_heads=1), prompt_tokens=["a", "b"])


def test_example_prompt_is_the_models_view(known_model, known_task):
    example = example_prompt(known_model, known_task)
    pos = int(known_task.answer_pos[0])
    assert example["token_ids"] == known_task.clean[0, : pos + 1].tolist()
    assert example["prompt_tokens"] == known_model.to_str_tokens(known_task.clean[0, : pos + 1], prepend_bos=False)
    with torch.no_grad():
        probs = torch.softmax(known_model(known_task.clean[:1, : pos + 1])[0, -1], -1)
    assert example["logits"][0]["prob"] == pytest.approx(float(probs[int(known_task.answers[0, 0])]), abs=1e-6)


def test_cantor_pairing_inverts():
    for x in range(0, 40, 7):
        for y in (0, 1, 17, 16383, 2**20 + 5):
            assert cantor_unpair(cantor_pair(x, y)) == (x, y)


@tracer
def test_reads_circuit_tracer_nodes():
    """Nodes made by circuit-tracer's own constructors: a transcoder feature's ``feature`` is the
    Cantor pair of (layer, index), so the index must be decoded, not read as is."""
    Node = graph_models.Node
    nodes = [Node.token_node(0, 651), Node.token_node(1, 9),
             Node.feature_node(3, 1, 1234, influence=0.4, activation=2.0),
             Node.error_node(3, 1), Node.logit_node(1, 42, "Austin", num_layers=26, target_logit=True, token_prob=0.4)]
    assert nodes[2].feature == cantor_pair(3, 1234) != 1234
    model = graph_models.Model(
        metadata=graph_models.Metadata(slug="demo", scan="gemma-2-2b", transcoder_list=[], prompt_tokens=["The", " capital"],
                                       prompt="The capital"),
        qParams=graph_models.QParams(pinnedIds=[], supernodes=[], linkType="both", clickedId="", sg_pos=""),
        nodes=nodes,
        links=[{"source": nodes[1].node_id, "target": nodes[2].node_id, "weight": 0.7},
               {"source": nodes[2].node_id, "target": nodes[4].node_id, "weight": 1.2}])
    c = from_attribution_graph(json.loads(model.model_dump_json()))
    assert "f3.transcoder.1234@1" in c.nodes and "m3@1" in c.nodes and "f27.logit.42@1" in c.nodes
    assert c.edge_data("f3.transcoder.1234@1->f27.logit.42@1")["score"] == -1.2
    assert c.graph.nodes["f3.transcoder.1234@1"]["score"] == 2.0


@tracer
def test_circuit_tracers_viewer_draws_the_export(circuit, tmp_path):
    """The export opened in circuit-tracer's own viewer (see ``browser.circuit_tracer_view``): every
    node is drawn in the pinned subgraph with the label it was exported with, every link between
    them too, and the page raises no error."""
    (tmp_path / "data").mkdir()
    save_circuit(circuit, tmp_path / "data" / "induction-demo.json", "attribution-graph")
    browser.check_circuit_tracer_draws(tmp_path / "data", "induction-demo", tmp_path)
