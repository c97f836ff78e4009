import pytest

from circuitkit import names


def test_round_trip_nodes():
    for text in ["input", "logits", "a3.h5", "m2", "a0.h1@7", "m4@0", "f2.resid_pre.117", "f1.mlp_out.3@5",
                 "e1.resid_pre", "e0.mlp_out@4", "input@3"]:
        assert str(names.parse_node(text)) == text


def test_formatters_match_parser():
    assert names.head(3, 5) == "a3.h5"
    assert names.mlp(2, pos=4) == "m2@4"
    assert names.feature(1, "blocks.1.hook_resid_pre", 9) == "f1.resid_pre.9"
    assert names.feature(1, "resid_pre", 9, pos=4) == "f1.resid_pre.9@4"
    assert names.error(1, "blocks.1.hook_resid_post", 2) == "e1.resid_post@2"
    err = names.parse_node("e1.resid_pre@6")
    assert (err.kind, err.layer, err.hook, err.pos) == ("error", 1, "resid_pre", 6)
    assert names.depth("e1.resid_pre") == names.depth("f1.resid_pre.3") < names.depth("f1.resid_post.3")
    assert names.edge("f0.resid_pre.3@9", "e1.resid_pre@10") == "f0.resid_pre.3@9->e1.resid_pre@10"
    assert names.edge("a0.h3", "a2.h1", "k") == "a0.h3->a2.h1<k>"
    assert names.edge("m1", "logits") == "m1->logits"
    e = names.parse_edge("a0.h3->a2.h1<k>")
    assert (e.parent, e.child, e.qkv) == ("a0.h3", "a2.h1", "k")


@pytest.mark.parametrize("bad", ["a3", "h5", "m", "attn3.h1", "a1.h0@x", "", "logit"])
def test_bad_node_names_raise(bad):
    with pytest.raises(ValueError, match="component name|position"):
        names.parse_node(bad)


def test_bad_edges_raise():
    with pytest.raises(ValueError, match="without naming <q>"):
        names.parse_edge("a0.h0->a1.h1")
    with pytest.raises(ValueError, match="not an attention head"):
        names.parse_edge("a0.h0->m1<q>")
    with pytest.raises(ValueError, match="malformed edge"):
        names.parse_edge("a0.h0-m1")


def test_computation_order_and_graph_size():
    order = names.sort_nodes(["logits", "m1", "a1.h0", "input", "m0", "a0.h1"], n_layers=2)
    assert order == ["input", "a0.h1", "m0", "a1.h0", "m1", "logits"]
    n_layers, n_heads = 2, 3
    edges = names.all_edges(n_layers, n_heads)
    # heads read 3 inputs from every earlier node; MLPs and logits read once.
    upstream_l0 = 1
    upstream_m0 = 1 + n_heads
    upstream_l1 = upstream_m0 + 1
    upstream_m1 = upstream_l1 + n_heads
    expected = (3 * n_heads * upstream_l0 + upstream_m0 + 3 * n_heads * upstream_l1 + upstream_m1
                + (upstream_m1 + 1))
    assert len(edges) == expected == len(set(edges))
    for e in edges:
        names.parse_edge(e)
    assert "a0.h0->a1.h2<v>" in edges and "a1.h0->a0.h0<q>" not in edges


def test_position_resolved_edges():
    assert names.edge_at("a0.h0->a1.h0<k>", 3) == "a0.h0@3->a1.h0@3<k>"
    assert names.edge_at("a0.h0@3->a1.h0@3<k>", None) == "a0.h0->a1.h0<k>"
    assert names.edge_position("a0.h0@3->a1.h0@3<k>") == ("a0.h0->a1.h0<k>", 3)
    assert names.edge_position("m0->logits") == ("m0->logits", None)
    for bad in ("a0.h0@3->a1.h0@4<k>", "a0.h0@3->a1.h0<k>"):
        with pytest.raises(ValueError, match="same position"):
            names.edge_position(bad)
    edges = ["input->a0.h0<q>", "a0.h0->logits"]
    assert names.edges_at(edges, 2) == ["input@0->a0.h0@0<q>", "a0.h0@0->logits@0",
                                        "input@1->a0.h0@1<q>", "a0.h0@1->logits@1"]
    assert names.edges_at(edges, 2) == [names.edge_at(e, p) for p in range(2) for e in edges]
    with pytest.raises(ValueError, match="without positions"):
        names.edges_at(["input@0->logits@0"], 2)
