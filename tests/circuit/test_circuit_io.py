import json

import pytest
import torch

from circuitkit import Scores, names
from circuitkit.circuit import FORMATS, Circuit, convert, load_circuit, save_circuit
from circuitkit.circuit.io import from_attribution_graph, to_mib


@pytest.fixture
def circuit():
    edges = names.all_edges(2, 2, True)
    values = torch.randn(len(edges), generator=torch.Generator().manual_seed(1))
    scores = Scores(values, edges, "eap-ig", task="ioi", meta={"n_layers": 2, "n_heads": 2, "has_mlp": True})
    c = Circuit.from_scores(scores).top_k(12)
    c.meta["faithfulness"] = 0.93
    c.meta["d_model"] = 16  # EAP-IG / MIB files need it
    c.meta["example_prompt"] = {"prompt": "When Mary and John", "prompt_tokens": ["When", " Mary", " and", " John"],
                                "token_ids": [5, 6, 7, 8], "logits": [{"token": " Mary", "token_id": 6, "prob": 0.5}]}
    c.graph.nodes["a1.h0"]["note"] = "name mover"  # extra attributes survive too
    c.graph.nodes["a0.h1"]["score"] = 0.0  # a zero score (sign 0) is not None
    c.graph.nodes["a0.h1"]["sign"] = 0
    c.edge_data(c.edges[0])["method"] = "acdc"  # per-edge method differing from the circuit's
    return c


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_everything(circuit, tmp_path, fmt):
    path = tmp_path / f"circuit.{ {'graphml': 'graphml', 'gexf': 'gexf'}.get(fmt, 'json') }"
    save_circuit(circuit, path, fmt)
    back = load_circuit(path)  # format recognised from suffix / keys
    assert back == circuit
    assert back.edges == circuit.edges and back.nodes == circuit.nodes
    for node, data in circuit.graph.nodes(data=True):
        assert back.graph.nodes[node] == data  # None stays None, bools stay bools
    index = ["graph-metadata.json"] if fmt == "attribution-graph" else []  # the viewer's list of graphs
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, *index])  # no temp files left behind


def test_mib_layout_matches_eap_ig(circuit):
    data = to_mib(circuit)
    assert set(data) == {"cfg", "nodes", "edges"} and data["cfg"]["n_layers"] == 2
    edge = next(iter(data["edges"]))
    assert names.parse_edge(edge) and set(data["edges"][edge]) >= {"score", "in_graph"}
    assert all(isinstance(v["in_graph"], bool) for v in data["nodes"].values())


def test_reads_foreign_mib_and_tracer_files(tmp_path):
    mib = {"cfg": {"n_layers": 1, "n_heads": 2, "d_model": 8},
           "nodes": {"input": True, "a0.h0": {"in_graph": True, "score": None}, "logits": True},
           "edges": {"input->a0.h0<q>": {"score": 1.5, "in_graph": True}, "a0.h0->logits": {"score": -0.5, "in_graph": True},
                     "input->logits": {"score": 0.01, "in_graph": False}}}
    path = tmp_path / "mib.json"
    path.write_text(json.dumps(mib))
    c = load_circuit(path)
    assert c.edges == ["input->a0.h0<q>", "a0.h0->logits"]
    assert c.edge_data("input->logits")["score"] == -0.01  # MIB's loss attributions, in circuitkit's sign
    tracer = {"metadata": {"slug": "demo", "scan": "gemma-2-2b", "prompt": "The capital", "schema_version": 1},
              "qParams": {"pinnedIds": []},
              "nodes": [{"node_id": "E_651_0", "feature": 651, "layer": "E", "ctx_idx": 0, "feature_type": "embedding",
                         "activation": None, "influence": 0.5, "clerp": "emb"},
                        {"node_id": "3_1234_0", "feature": 1234, "layer": "3", "ctx_idx": 0,
                         "feature_type": "cross layer transcoder", "activation": 2.0, "influence": 0.4, "clerp": "x"},
                        {"node_id": "3_error_0", "feature": None, "layer": "3", "ctx_idx": 0,
                         "feature_type": "mlp reconstruction error", "activation": None, "influence": 0.1},
                        {"node_id": "26_9_0", "feature": 9, "layer": "26", "ctx_idx": 0, "feature_type": "logit",
                         "activation": None, "influence": 0.9, "clerp": 'Output "Austin" (p=0.4)'}],
              "links": [{"source": "E_651_0", "target": "3_1234_0", "weight": 0.7},
                        {"source": "3_1234_0", "target": "26_9_0", "weight": 1.2},
                        {"source": "3_error_0", "target": "26_9_0", "weight": -0.3}]}
    c = from_attribution_graph(tracer)
    assert set(c.nodes) == {"input@0", "f3.transcoder.1234@0", "m3@0", "f26.logit.9@0"}
    assert c.edge_data("f3.transcoder.1234@0->f26.logit.9@0")["score"] == -1.2  # -weight: circuitkit's sign
    assert c.graph.nodes["f26.logit.9@0"]["clerp"] == 'Output "Austin" (p=0.4)'
    # and it round-trips through our own formats
    save_circuit(c, tmp_path / "t.graphml")
    assert load_circuit(tmp_path / "t.graphml") == c


def test_bad_files_raise_and_write_nothing(circuit, tmp_path):
    good = tmp_path / "good.json"
    save_circuit(circuit, good)
    data = json.loads(good.read_text())
    cases = {
        "future.json": ({**data, "format_version": 99}, "format_version 99.*upgrade circuitkit"),
        "unknown.json": ({"hello": 1}, "no known circuit format"),
        "badnode.json": ({**data, "nodes": [{**data["nodes"][0], "id": "attn0"}, *data["nodes"][1:]]}, "invalid circuit"),
        "badmib.json": ({"cfg": {}, "nodes": {}, "edges": {"a0->a1": {"score": 1}}}, "malformed entry"),
    }
    for name, (content, pattern) in cases.items():
        src = tmp_path / name
        src.write_text(json.dumps(content))
        out = tmp_path / f"{name}.graphml"
        with pytest.raises(ValueError, match=pattern):
            convert(src, out, "graphml")
        assert not out.exists()
    truncated = tmp_path / "truncated.graphml"
    truncated.write_bytes((tmp_path / "good.json").read_bytes()[:50])
    with pytest.raises(ValueError, match="not valid GraphML"):
        load_circuit(truncated)
    with pytest.raises(ValueError, match="unknown circuit format .dot."):
        convert(good, tmp_path / "x.out", "dot")
    # an export that fails while serialising leaves no file and no temp file
    circuit.meta["bad"] = object()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(TypeError):
        save_circuit(circuit, tmp_path / "partial.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_graphml_and_gexf_speak_their_schemas(circuit):
    """Booleans as XML Schema spells them (true / false), read by the XML itself, and no helper
    attribute on every element (None-valued core attributes are just left out)."""
    import xml.etree.ElementTree as ET

    from circuitkit.circuit.io.graphml import from_graphml, to_gexf, to_graphml

    circuit.graph.nodes["a1.h0"]["role"] = None  # an extra attribute that is None still comes back
    raw = to_graphml(circuit)
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    root = ET.fromstring(raw)
    keys = {k.get("id"): k for k in root.findall("g:key", ns)}
    booleans = {i for i, k in keys.items() if k.get("attr.type") == "boolean"}
    values = {d.text for d in root.iter("{http://graphml.graphdrawing.org/xmlns}data") if d.get("key") in booleans}
    assert booleans and values == {"true", "false"}
    assert not any(k.get("attr.name", "").startswith("_") for k in keys.values())
    gexf = ET.fromstring(to_gexf(circuit))
    gns = "{http://www.gexf.net/1.2draft}"
    titles = {a.get("id"): a for a in gexf.iter(f"{gns}attribute")}
    assert not any(a.get("title").startswith("_") for a in titles.values())
    flags = {v.get("value") for v in gexf.iter(f"{gns}attvalue") if titles[v.get("for")].get("type") == "boolean"}
    assert flags == {"true", "false"}
    assert from_graphml(raw, "x") == circuit
    # files written with the old per-element helper attribute still read
    old = raw.replace(b'<key id="d0"', b'<key id="dx" for="node" attr.name="_none_attrs" attr.type="string" />\n  <key id="d0"')
    old = old.replace(b'<node id="a1.h0">', b'<node id="a1.h0">\n      <data key="dx">old_extra</data>', 1)
    assert from_graphml(old, "old").graph.nodes["a1.h0"]["old_extra"] is None


def test_the_format_registry_reads_writes_and_refuses(tmp_path):
    """Every registered format round-trips a circuit's edges; an unknown suffix or an option the
    format does not take is refused before anything is written; a new format is one register call."""
    import json

    import circuitkit as ck
    from circuitkit.circuit.io import CIRCUIT_FORMATS, register_format

    circuit = ck.reference_circuit("induction-handbuilt")
    for name in CIRCUIT_FORMATS:
        if name == "attribution-graph":  # edges between positioned nodes: its own tests cover it
            continue
        path = save_circuit(circuit, tmp_path / f"c.{name}", name, **({"d_model": 8} if name == "mib" else {}))
        assert set(load_circuit(path, name).edges) == set(circuit.edges), name
    refused = tmp_path / "refused"
    refused.mkdir()
    with pytest.raises(ValueError, match=r"cannot tell a circuit format from the suffix '.xyz'"):
        save_circuit(circuit, refused / "c.xyz")
    with pytest.raises(ValueError, match=r"the graphml format takes no \['sign'\]"):
        save_circuit(circuit, refused / "c.graphml", sign="mib")
    assert not any(refused.iterdir())

    def to_edge_list(c):
        return {"edge_list": c.edges}

    def from_edge_list(data, where):
        return Circuit.from_nodes_edges(edges=data["edge_list"])

    register_format("edge-list", to_edge_list, from_edge_list, json_flavour=True,
                    recognise=lambda data: "edge_list" in data)
    try:
        path = save_circuit(circuit, tmp_path / "c.edges.json", "edge-list")
        assert json.loads(path.read_text()) == {"edge_list": circuit.edges}
        assert load_circuit(path).edges == circuit.edges  # recognised by its keys
    finally:
        del CIRCUIT_FORMATS["edge-list"]
