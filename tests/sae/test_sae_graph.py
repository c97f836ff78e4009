"""The feature graph's estimates against the chain rule and exact patching."""

from __future__ import annotations

import pytest
import torch

from circuitkit import names
from circuitkit.sae.graph import exact_edge_effects, exact_node_effects, feature_graph
from circuitkit.tasks.builders import ioi


@pytest.fixture(scope="module")
def task(word_tokenizer):
    return ioi(word_tokenizer, n_prompts=4)


@pytest.fixture(scope="module")
def saes(random_sae):
    return [random_sae(32, 12, "blocks.0.hook_attn_out", seed=2),
            random_sae(32, 16, "blocks.1.hook_resid_pre", seed=1),
            random_sae(32, 10, "blocks.1.hook_resid_post", seed=3)]


@pytest.fixture(scope="module")
def graph(tiny_model, saes, task):
    # node_threshold -1: every node is a candidate, so every path is covered by the edges.
    return feature_graph(tiny_model, saes, task, method="attribution", node_threshold=-1.0, progress=False)


def test_edges_out_of_a_node_sum_to_its_effect(graph):
    # With every site cut, the chain rule splits each node's gradient over its direct children:
    # sum_d edge(u -> d) == IE(u) for every node u (first order).
    ie = graph.nodes.as_dict()
    out: dict[str, float] = {}
    for label, value in zip(graph.edges.labels, graph.edges.values.tolist(), strict=True):
        parent = names.parse_edge(label).parent
        out[parent] = out.get(parent, 0.0) + value
    checked = [u for u in out if abs(ie[u]) > 1e-4]
    assert len(checked) > 20
    for u in checked:
        assert out[u] == pytest.approx(ie[u], rel=1e-3, abs=1e-5), u
    # Nodes of the last site reach only the logits, and those edges are their effects.
    last = [lab for lab in graph.edges.labels if lab.startswith("f1.resid_post")]
    assert last and all(names.parse_edge(lab).child == names.LOGITS for lab in last)


def test_error_nodes_and_input_positions_are_nodes(graph, task):
    n_pos = task.clean.shape[1]
    labels = set(graph.nodes.labels)
    assert {names.error(1, "resid_pre", p) for p in range(n_pos)} <= labels
    assert {names.with_pos(names.INPUT, p) for p in range(n_pos)} <= labels
    assert len(graph.nodes) == n_pos * (1 + 12 + 16 + 10 + 3)


def test_summed_positions_are_the_sum_of_each_position(tiny_model, saes, task, graph):
    summed = feature_graph(tiny_model, saes, task, method="attribution", positions="sum", node_threshold=-1.0,
                           progress=False)
    each = graph.nodes.as_dict()
    n_pos = task.clean.shape[1]
    for f in (0, 5, 9):
        node = names.feature(1, "resid_post", f)
        assert summed.nodes[node] == pytest.approx(sum(each[names.with_pos(node, p)] for p in range(n_pos)), abs=1e-5)


def test_estimates_equal_exact_patching_where_the_model_is_linear(tiny_attn_only, random_sae, task):
    # No LayerNorm; the last site reads the final residual stream, so the metric is linear in its
    # nodes: first-order estimates are exact there, for nodes and for their edges into the logits.
    saes = [random_sae(32, 16, "blocks.1.hook_resid_pre", seed=4), random_sae(32, 12, "blocks.1.hook_resid_post", seed=5)]
    g = feature_graph(tiny_attn_only, saes, task, method="attribution", progress=False)
    last = [lab for lab in g.candidates if lab.startswith(("f1.resid_post", "e1.resid_post"))]
    top = sorted(last, key=lambda n: -abs(g.nodes[n]))[:5]
    exact = exact_node_effects(tiny_attn_only, saes, task, top, progress=False)
    assert abs(exact.values).max() > 1e-3
    for node, value in exact.as_dict().items():
        assert g.nodes[node] == pytest.approx(value, rel=1e-3, abs=1e-5)
    edges = [names.edge(n, names.LOGITS) for n in top]
    exact_e = exact_edge_effects(tiny_attn_only, saes, task, edges, progress=False)
    torch.testing.assert_close(exact_e.values, exact.values, atol=1e-5, rtol=1e-4)


def test_bad_arguments_fail_early(tiny_model, saes, task):
    with pytest.raises(ValueError, match="unknown feature baseline"):
        feature_graph(tiny_model, saes, task, baseline="median")
    with pytest.raises(ValueError, match="positions must be 'each'"):
        feature_graph(tiny_model, saes, task, positions="all")
    with pytest.raises(ValueError, match="method must be one of"):
        feature_graph(tiny_model, saes, task, method="eap")
    with pytest.raises(ValueError, match="names no spliced site"):
        exact_node_effects(tiny_model, saes, task, ["f0.resid_pre.1@2"])


def test_chain_rule_holds_through_a_transcoder(tiny_model, random_sae, task):
    from sae_lens import Transcoder, TranscoderConfig

    torch.manual_seed(7)
    tc = Transcoder(TranscoderConfig(d_in=32, d_sae=20, d_out=32, apply_b_dec_to_input=False))
    with torch.no_grad():
        tc.b_enc.uniform_(-0.1, 0.1)
    tc.cfg.metadata.hook_name = "blocks.0.ln2.hook_normalized"
    tc.cfg.metadata.hook_name_out = "blocks.0.hook_mlp_out"
    saes = [tc, random_sae(32, 12, "blocks.1.hook_resid_post", seed=8)]
    g = feature_graph(tiny_model, saes, task, method="attribution", node_threshold=-1.0, progress=False)
    ie = g.nodes.as_dict()
    out: dict[str, float] = {}
    for label, value in zip(g.edges.labels, g.edges.values.tolist(), strict=True):
        parent = names.parse_edge(label).parent
        out[parent] = out.get(parent, 0.0) + value
    checked = [u for u in out if u.startswith(("f0.mlp_out", "e0.mlp_out")) and abs(ie[u]) > 1e-4]
    assert len(checked) > 10
    for u in checked:
        assert out[u] == pytest.approx(ie[u], rel=1e-3, abs=1e-5), u
    # the transcoder's features reach the resid_post features directly
    assert any(lab.startswith("f0.mlp_out") and "->f1.resid_post" in lab for lab in g.edges.labels)
