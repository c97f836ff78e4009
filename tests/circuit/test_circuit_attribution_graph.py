"""The attribution-graph export against circuit-tracer's own data model and what its viewer reads.

circuit-tracer (PyPI) 0.5 pins ``transformers<=4.57.3``, which this project's TransformerLens 3
cannot use, so it is not a ``dev`` extra: install it with ``pip install --no-deps circuit-tracer``
(``circuit_tracer.frontend.graph_models`` needs only pydantic). Outside CI the validation tests
skip without it; with ``CI`` set they fail.
"""

# ruff: noqa: F811  (pytest fixtures imported from circuit_fixtures are parameters here)
import json
import os
import re

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


# circuit-tracer's viewer page loads six scripts from the web; the test serves npm's copies instead.
# d3.js on transformer-circuits.pub is d3 v7; its jetpack build is d3-jetpack's, whose nestBy still
# calls d3.nest (d3-collection, dropped from d3 in v6) and whose conventions() returns the chart
# without a drawAxis method, which the 2024 build adds (a three-line shim below). The live-reload
# client and the .npy reader are not needed to show a graph.
VIEWER_SCRIPTS = {
    "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/d3.js":
        [("d3@7.9.0", "dist/d3.min.js"), ("d3-collection@1.0.7", "dist/d3-collection.min.js")],
    "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/jetpack_2024-07-20.js":
        [("d3-jetpack@2.2.1", "build/d3-jetpack.cjs")],
    "https://unpkg.com/dagre@0.8.5/dist/dagre.min.js": [("dagre@0.8.5", "dist/dagre.min.js")],
    "https://unpkg.com/pako@2.1.0/dist/pako.min.js": [("pako@2.1.0", "dist/pako.min.js")],
    "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/hotserver-client-ws.js": [],
    "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/npy_v0.js": [],
}
DRAW_AXIS_SHIM = ("<script>(function(){var conventions = d3.conventions; d3.conventions = function(options){"
                  "var c = conventions(options); c.drawAxis = function(svg){"
                  "return d3.drawAxis(Object.assign({}, c, {svg: svg || c.svg}))}; return c}})()</script>")


def _offline_viewer(folder):
    """A copy of circuit-tracer's viewer (frontend/assets) whose scripts are all local."""
    import shutil
    from pathlib import Path

    import browser
    import circuit_tracer

    shutil.copytree(Path(circuit_tracer.__file__).parent / "frontend" / "assets", folder)
    page = (folder / "index.html").read_text()
    remote = set(re.findall(r"<script src='(https?://[^']+)'></script>", page))
    assert remote == set(VIEWER_SCRIPTS), f"circuit-tracer's viewer loads other scripts now: {remote ^ set(VIEWER_SCRIPTS)}"
    for url, files in VIEWER_SCRIPTS.items():
        tags = []
        for spec, inside in files:
            local = f"vendor/{spec.replace('@', '-')}.js"
            (folder / "vendor").mkdir(exist_ok=True)
            shutil.copy(browser.npm_package(spec) / inside, folder / local)
            tags.append(f"<script src='./{local}'></script>")
        if "jetpack" in url:
            tags.append(DRAW_AXIS_SHIM)
        page = page.replace(f"<script src='{url}'></script>", "".join(tags))
    assert "<script src='http" not in page
    (folder / "index.html").write_text(page)
    return folder


@tracer
def test_circuit_tracers_viewer_draws_the_export(circuit, tmp_path):
    """The export opened in circuit-tracer's own viewer, served by its own local server, in headless
    Chromium: every node is drawn in the pinned subgraph with the label it was exported with, and
    every link between them, and the page raises no error."""
    import socket

    import browser
    from circuit_tracer.frontend.local_server import serve

    chromium_path = browser.chromium()  # noqa: F841  (skip / fail before any work when absent)
    front = _offline_viewer(tmp_path / "viewer")
    (tmp_path / "data").mkdir()
    save_circuit(circuit, tmp_path / "data" / "induction-demo.json", "attribution-graph")
    graph = json.loads((tmp_path / "data" / "induction-demo.json").read_text())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve(str(tmp_path / "data"), frontend_dir=str(front), port=port)
    try:
        dom, console = browser.dump_dom(f"http://localhost:{port}/index.html?slug=induction-demo", tmp_path / "profile")
    finally:
        server.stop()
    errors = [line for line in console if "Uncaught" in line or "Error" in line]
    assert not errors, errors
    labels = [re.sub(r"<[^>]+>", "\n", m).split("\n") for m in re.findall(r'class="node-text-container">(.*?)</div>', dom)]
    shown = {text.strip() for label in labels for text in label if text.strip()}
    for node in graph["nodes"]:
        if node["feature_type"] == "embedding":
            assert any(text.startswith("Emb:") and EXAMPLE["prompt_tokens"][node["ctx_idx"]].strip() in text for text in shown)
        else:
            assert node["clerp"] in shown, (node["clerp"], shown)
    assert dom.count('class="node pinned"') == len(graph["nodes"])
    assert dom.count('class="link-path"') == len(graph["links"])
