"""The MIB / EAP-IG export against what EAP-IG's own loader does.

EAP-IG (github:hannamw/EAP-IG, ``src/eap/graph.py``; the same loader is MIB's
``circuit_loading.load_graph_from_json``) is not on PyPI, so ``eap_ig_load`` below re-states, key
by key, what ``Graph.from_json`` reads (written from reading that code, not copied):

* ``d`` must have ``cfg``, ``nodes``, ``edges``; ``Graph.from_model(d["cfg"], neuron_level=True,
  node_scores=True)`` reads ``cfg["n_layers"]``, ``cfg["n_heads"]`` (integer arithmetic),
  ``cfg["parallel_attn_mlp"]`` (truthiness) and ``cfg["d_model"]`` (a tensor width: an int);
* its graph has ``input``, ``a{l}.h{h}``, ``m{l}`` (always, even for attention-only models) and
  ``logits``; an edge from every earlier residual-stream writer into each head's q / k / v, each
  MLP (after its layer's heads unless ``parallel_attn_mlp``) and the logits;
* for each node but ``logits``: ``g.nodes[name]`` (unknown names fail), ``node_dict["in_graph"]``
  (so the value is a dict, not the older bare bool), ``node_dict["score"]`` if present (assigned
  into a float tensor: ``None`` fails), ``neurons`` / ``neurons_scores`` if present;
* for each edge: ``g.edges[name]`` (unknown names fail), ``info["score"]`` (a float tensor cell)
  and ``info["in_graph"]`` (a bool tensor cell).

``mib_prune`` re-states ``Graph.prune`` (what ``evaluate_graph`` runs first), the slow iterative
way it is written there, to check that an export is already the circuit MIB evaluates.

The two fixtures in ``data/`` were written by EAP-IG's own code (``make_eap_ig_fixtures.py`` beside
this file, run on a checkout of github:hannamw/EAP-IG): ``eap_ig_to_json_1l2h.json`` by its
``Graph.to_json`` (1 layer, 2 heads, seeded random scores, ``apply_topn(3)``), and
``eap_ig_reads_circuitkit.json``, circuitkit's export of the ``dangling`` circuit with what EAP-IG's
``Graph.from_json`` holds after reading it, before and after its ``prune()``.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from circuitkit import Scores, names
from circuitkit.circuit import Circuit, cap_by_route, load_circuit, save_circuit
from circuitkit.circuit.io import from_mib, to_mib

FIXTURE = Path(__file__).parent / "data" / "eap_ig_to_json_1l2h.json"
EAP_IG_READS = json.loads((Path(__file__).parent / "data" / "eap_ig_reads_circuitkit.json").read_text())


def their_graph(cfg: dict) -> tuple[list[str], list[str]]:
    """Node and edge names of EAP-IG's ``Graph.from_model(cfg)``."""
    nodes, edges, stream = ["input"], [], ["input"]
    for layer in range(cfg["n_layers"]):
        heads = [f"a{layer}.h{h}" for h in range(cfg["n_heads"])]
        nodes += heads + [f"m{layer}"]
        edges += [f"{p}->{h}<{x}>" for p in stream for h in heads for x in "qkv"]
        if cfg["parallel_attn_mlp"]:
            edges += [f"{p}->m{layer}" for p in stream]
            stream = stream + heads
        else:
            stream = stream + heads
            edges += [f"{p}->m{layer}" for p in stream]
        stream = stream + [f"m{layer}"]
    edges += [f"{p}->logits" for p in stream]
    return nodes + ["logits"], edges


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def eap_ig_load(d: dict) -> dict:
    """What ``Graph.from_json(d)`` would hold: {"nodes": {name: in_graph}, "edges": {name: (score,
    in_graph)}}; an AssertionError where it would fail."""
    assert isinstance(d, dict) and all(k in d for k in ("cfg", "nodes", "edges")), "missing top-level keys"
    cfg = d["cfg"]
    for key in ("n_layers", "n_heads", "d_model"):
        assert isinstance(cfg.get(key), int) and not isinstance(cfg[key], bool), f"cfg[{key!r}] must be an int"
    assert isinstance(cfg.get("parallel_attn_mlp"), bool), "cfg['parallel_attn_mlp'] must be a bool"
    node_names, edge_names = their_graph(cfg)
    nodes = {n: False for n in node_names}
    nodes["logits"] = True  # LogitNode.in_graph is always True
    for name, node_dict in d["nodes"].items():
        if name == "logits":
            continue
        assert name in nodes, f"node {name!r} is not in EAP-IG's graph"
        assert isinstance(node_dict, dict) and isinstance(node_dict["in_graph"], bool), f"node {name!r}: in_graph"
        if "score" in node_dict:
            assert _is_real(node_dict["score"]), f"node {name!r}: score {node_dict['score']!r} is no float"
        for key in ("neurons", "neurons_scores"):
            if key in node_dict:
                assert len(node_dict[key]) == cfg["d_model"], f"node {name!r}: {key} of the wrong width"
        nodes[name] = node_dict["in_graph"]
    edges = {e: (0.0, False) for e in edge_names}
    for name, info in d["edges"].items():
        assert name in edges, f"edge {name!r} is not in EAP-IG's graph"
        assert _is_real(info["score"]), f"edge {name!r}: score {info['score']!r} is no float"
        assert isinstance(info["in_graph"], bool), f"edge {name!r}: in_graph"
        edges[name] = (float(info["score"]), info["in_graph"])
    return {"cfg": cfg, "nodes": nodes, "edges": edges}


def mib_prune(loaded: dict) -> set[str]:
    """The in-graph edges after EAP-IG's ``Graph.prune``: repeatedly drop nodes without an in-graph
    output edge or (input excepted) input edge, then edges whose parent or child is dropped."""
    def split(edge):
        parent, child = edge.split("->")
        return parent, child.split("<")[0]

    edges = {e for e, (_, in_graph) in loaded["edges"].items() if in_graph}
    node_in = dict(loaded["nodes"])
    while True:
        has_out = {split(e)[0] for e in edges}
        has_in = {split(e)[1] for e in edges} | {"input"}
        new_nodes = {n: (n in has_out and n in has_in) for n in node_in}
        new_nodes["logits"] = True
        new_edges = {e for e in edges if new_nodes[split(e)[0]] and new_nodes[split(e)[1]]}
        if new_nodes == node_in and new_edges == edges:
            return edges
        node_in, edges = new_nodes, new_edges


def _scores(n_layers=2, n_heads=2, has_mlp=True, seed=1) -> Scores:
    edges = names.all_edges(n_layers, n_heads, has_mlp)
    values = torch.randn(len(edges), generator=torch.Generator().manual_seed(seed))
    return Scores(values, edges, "eap-ig", task="ioi", meta={"n_layers": n_layers, "n_heads": n_heads, "has_mlp": has_mlp})


@pytest.fixture
def dangling():
    """A top-k circuit left unpruned (as smallest_faithful returns it): some in-graph edges lie on
    no input -> logits path."""
    c = Circuit.from_scores(_scores()).top_k(14, prune=False)
    c.meta["d_model"] = 16
    assert c.prune_dangling().edges != c.edges
    return c


def test_export_loads_under_eap_ig_and_is_what_mib_evaluates(dangling):
    data = to_mib(dangling)
    json.dumps(data, allow_nan=False)  # plain JSON: no NaN / inf
    loaded = eap_ig_load(data)
    assert loaded["cfg"] == {**loaded["cfg"], "n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 16}
    kept = {e for e, (_, in_graph) in loaded["edges"].items() if in_graph}
    assert kept == set(dangling.prune_dangling().edges)  # the dangling edges are pruned...
    assert mib_prune(loaded) == kept  # ...so MIB's own prune changes nothing
    assert set(data["cfg"]["circuitkit"]["pruned_dangling"]) == set(dangling.edges) - kept
    # MIB's sign: every written edge score is -score
    for key in dangling.all_edges:
        assert loaded["edges"][key][0] == -dangling.edge_data(key)["score"]
    assert to_mib(dangling, sign="circuitkit")["edges"][key]["score"] == dangling.edge_data(key)["score"]
    with pytest.raises(ValueError, match="dangling='prune'"):
        to_mib(dangling, dangling="error")
    # reading it back gives the pruned circuit, scores in circuitkit's sign again
    assert from_mib(json.loads(json.dumps(data))) == dangling.prune_dangling()


def test_raw_scores_are_exported_and_capped_ones_come_back(tmp_path):
    raw = _scores(seed=4)
    capped = cap_by_route(raw)
    assert not torch.equal(capped.values, raw.values)
    c = Circuit.from_scores(capped).top_k(10)
    for label, value in raw.as_dict().items():
        c.edge_data(label)["raw_score"] = value
    c.meta.update(d_model=16, route_cap=True)
    data = to_mib(c)
    assert data["cfg"]["circuitkit"]["scores"] == "raw"
    assert {k: v["score"] for k, v in data["edges"].items()} == {k: -v for k, v in raw.as_dict().items()}
    assert {k: v["score"] for k, v in to_mib(c, scores="circuit")["edges"].items()} == \
        {k: -v for k, v in capped.as_dict().items()}
    path = save_circuit(c, tmp_path / "c.json", "mib")
    assert load_circuit(path) == c  # lossless: capped scores and raw_score both come back
    del c.edge_data(c.edges[0])["raw_score"]
    with pytest.raises(ValueError, match="scores='circuit'"):
        to_mib(c)


def test_what_eap_ig_cannot_hold_is_refused_or_written_its_way():
    c = Circuit.from_scores(_scores()).top_k(6)
    with pytest.raises(ValueError, match="d_model"):
        to_mib(c)
    data = to_mib(c, d_model=32)  # unscored nodes: no 'score' key at all (null cannot be assigned)
    assert data["cfg"]["d_model"] == 32 and all("score" not in v for v in data["nodes"].values())
    eap_ig_load(data)
    positional = Circuit.from_nodes_edges(["a0.h0@3"], n_layers=1, n_heads=1)
    positional.meta["d_model"] = 8
    with pytest.raises(ValueError, match="whole heads and MLPs"):
        to_mib(positional)
    # unscored edges (a reference circuit) are written as 0.0 and read back unscored
    ref = Circuit.from_nodes_edges(edges=["input->a0.h0<v>", "a0.h0->logits"], n_layers=1, n_heads=2, has_mlp=False)
    ref.meta["d_model"] = 8
    data = to_mib(ref)
    assert eap_ig_load(data)["edges"]["a0.h0->logits"] == (0.0, True)
    assert from_mib(data) == ref


def test_node_circuit_marks_the_edges_it_keeps():
    scores = Scores(torch.tensor([0.5, -2.0, 0.1]), ["a0.h0", "a1.h1", "m1"], "head-ablation", task="ioi",
                    meta={"n_layers": 2, "n_heads": 2, "has_mlp": True})
    c = Circuit.from_scores(scores).top_k(2)  # a1.h1 and a0.h0
    c.meta["d_model"] = 16
    data = to_mib(c)
    loaded = eap_ig_load(data)
    kept = {e for e, (_, in_graph) in loaded["edges"].items() if in_graph}
    inside = {"input", "a0.h0", "a1.h1", "logits"}
    assert kept == {e for e in their_graph(data["cfg"])[1] if {names.parse_edge(e).parent, names.parse_edge(e).child} <= inside}
    assert mib_prune(loaded) == kept
    assert data["nodes"]["a1.h1"]["score"] == 2.0  # MIB's sign
    assert from_mib(data) == c


def test_attention_only_and_parallel_models_fit_their_graph():
    c = Circuit.from_scores(_scores(has_mlp=False)).top_k(8)
    c.meta["d_model"] = 16
    eap_ig_load(to_mib(c))  # their graph has m0, m1; the file just does not mention them
    c = Circuit.from_scores(_scores(seed=2)).top_k(60)
    assert "a1.h0->m1" in c.edges
    with pytest.raises(ValueError, match="parallel_attn_mlp"):
        to_mib(c, d_model=16, parallel_attn_mlp=True)


def test_reads_eap_ig_to_json_file():
    raw = json.loads(FIXTURE.read_text())
    eap_ig_load(raw)  # the restated loader takes their file
    c = load_circuit(FIXTURE)
    kept = {e for e, v in raw["edges"].items() if v["in_graph"]}
    assert len(kept) == 3 and set(c.edges) == kept
    assert set(c.nodes) == {n for n, v in raw["nodes"].items() if v["in_graph"]} | {"logits"}
    for edge in kept:  # loss attributions, read in circuitkit's sign
        assert c.edge_data(edge)["score"] == -raw["edges"][edge]["score"]
        assert from_mib(raw, sign="circuitkit").edge_data(edge)["score"] == raw["edges"][edge]["score"]
    assert c.meta["d_model"] == 8 and c.graph.graph["n_layers"] == 1
    # and exported again it is their file, edge for edge
    back = to_mib(c)
    assert {k: (v["score"], v["in_graph"]) for k, v in back["edges"].items()} == \
        {k: (v["score"], v["in_graph"]) for k, v in raw["edges"].items()}
    assert {k: v["in_graph"] for k, v in back["nodes"].items()} == {k: v["in_graph"] for k, v in raw["nodes"].items()}


def test_eap_ig_reads_the_export_as_circuitkit_means_it(dangling):
    """EAP-IG's own ``from_json`` read today's export of ``dangling`` (the fixture holds what it
    read); its ``prune()`` changed nothing, and the restated loader and prune above agree with it."""
    assert to_mib(dangling) == EAP_IG_READS["export"]  # the file EAP-IG read is what circuitkit writes now
    theirs, pruned = EAP_IG_READS["loaded"], EAP_IG_READS["pruned"]
    assert pruned == theirs  # MIB's prune leaves the exported circuit as it is
    ours = eap_ig_load(EAP_IG_READS["export"])
    assert ours["nodes"] == theirs["nodes"]
    assert set(ours["edges"]) == set(theirs["edges"])
    for edge, (score, in_graph) in theirs["edges"].items():  # EAP-IG holds scores as float32
        assert ours["edges"][edge][1] == in_graph and ours["edges"][edge][0] == pytest.approx(score, rel=1e-6, abs=1e-7)
    assert mib_prune(ours) == {e for e, (_, in_graph) in pruned["edges"].items() if in_graph} == set(dangling.prune_dangling().edges)


def test_curve_sizes_and_pruning_are_eap_igs_apply_topn():
    """At each size of MIB's curve, the edges circuitkit's faithfulness_curve evaluates (signed for
    CPR, absolute for CMD) are those EAP-IG's apply_topn(int(pct * n_edges), absolute, prune=True)
    kept (recorded from EAP-IG's code on a 6-layer, 6-head graph)."""
    from circuitkit.circuit.evaluation import MIB_KS, mib_prune, mib_size, rank_edges

    recorded = EAP_IG_READS["apply_topn"]
    edges = names.all_edges(6, 6, True)
    assert set(edges) == set(recorded["scores"])
    scores = Scores(torch.tensor([recorded["scores"][e] for e in edges], dtype=torch.float64), edges, "eap-ig")
    nonempty, ranked = 0, {absolute: rank_edges(scores, edges, absolute) for absolute in (False, True)}
    for k, pct in zip(MIB_KS, (.001, .002, .005, .01, .02, .05, .1, .2, .5, 1), strict=True):
        for absolute in (False, True):
            ours = mib_prune(ranked[absolute][:mib_size(k, len(edges))])
            assert sorted(ours) == recorded["kept"][f"{pct}/{'abs' if absolute else 'signed'}"], (k, absolute)
            nonempty += bool(ours)
    assert nonempty >= 8
