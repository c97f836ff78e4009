"""Feature circuits as Circuits: faithfulness by mean-ablating features, pruning, export, rendering."""

from __future__ import annotations

import json

import browser
import networkx as nx
import pytest
import torch

from circuitkit import names
from circuitkit.circuit import load_circuit, save_circuit
from circuitkit.circuit.features import (
    evaluate_feature_circuit,
    feature_circuit,
    spearman,
    top_features,
)
from circuitkit.circuit.io import from_attribution_graph, to_attribution_graph
from circuitkit.sae.graph import baseline_values, run_with_features
from circuitkit.sae.splice import make_sites
from circuitkit.tasks.builders import ioi
from circuitkit.viz import circuit_figure


@pytest.fixture(scope="module")
def task(word_tokenizer):
    return ioi(word_tokenizer, n_prompts=4)


def _sae(d_sae: int, hook_name: str, seed: int):
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=d_sae))
    with torch.no_grad():
        sae.b_enc.uniform_(-0.1, 0.1)
    sae.cfg.metadata.hook_name = hook_name
    return sae


@pytest.fixture(scope="module")
def saes():
    return [_sae(16, "blocks.1.hook_resid_pre", 1), _sae(12, "blocks.1.hook_resid_post", 3)]


@pytest.fixture(scope="module")
def circuit(tiny_model, saes, task):
    return feature_circuit(tiny_model, saes, task, method="ig", steps=3, progress=False)


def test_keeping_every_node_reproduces_the_model(tiny_model, saes, task, circuit):
    sites = make_sites(tiny_model, saes)
    base = baseline_values(tiny_model, sites, task)
    n_pos = task.clean.shape[1]
    keep_all = {i: torch.ones(n_pos, s.d_sae, dtype=torch.bool) for i, s in enumerate(sites)}
    errs = {i: torch.ones(n_pos, dtype=torch.bool) for i in range(len(sites))}
    with torch.no_grad():
        torch.testing.assert_close(run_with_features(tiny_model, sites, task.clean, base, keep_all, errs),
                                   tiny_model(task.clean), atol=1e-4, rtol=1e-4)
    all_nodes = [names.feature(s.layer, s.short, f, p) for s in sites for f in range(s.d_sae) for p in range(n_pos)]
    all_nodes += [s.error(p) for s in sites for p in range(n_pos)]
    ev = evaluate_feature_circuit(tiny_model, saes, task, all_nodes)
    assert ev.faithfulness == pytest.approx(1.0, abs=1e-4) and ev.completeness == pytest.approx(1.0, abs=1e-4)


def test_error_handling_modes_differ_where_errors_carry_the_behaviour(tiny_model, saes, task, circuit):
    # Random SAEs explain little: ablating the errors destroys the behaviour, keeping them restores it.
    found = top_features(circuit, 10)
    kept = evaluate_feature_circuit(tiny_model, saes, task, found, errors="keep")
    ablated = evaluate_feature_circuit(tiny_model, saes, task, found, errors="ablate")
    assert kept.metric_circuit != pytest.approx(ablated.metric_circuit)
    assert kept.metric_empty != pytest.approx(ablated.metric_empty)
    with pytest.raises(ValueError, match="errors must be one of"):
        evaluate_feature_circuit(tiny_model, saes, task, found, errors="drop")
    with pytest.raises(ValueError, match="names no spliced site"):
        evaluate_feature_circuit(tiny_model, saes, task, ["f0.attn_out.1@2"])


def test_prunes_exports_and_renders_like_any_circuit(circuit, tmp_path):
    assert any(names.parse_node(n).kind == "error" for n in circuit.nodes)
    pruned = circuit.top_k(30, level="edge")
    assert 0 < len(pruned.edges) <= 30
    # every kept edge lies on a path from some input position to the logits
    view = pruned.subgraph()
    assert all(any(names.parse_node(a).kind == "input" for a in nx.ancestors(view, u) | {u})
               for u, _ in view.edges())
    path = save_circuit(pruned, tmp_path / "fc.json")
    assert load_circuit(path) == pruned
    graph = to_attribution_graph(pruned)
    ids = [n["node_id"] for n in graph["nodes"]]
    assert len(ids) == len(set(ids)) == len(pruned.nodes)
    assert {n["feature_type"] for n in graph["nodes"]} >= {"embedding", "logit", "cross layer transcoder"}
    assert from_attribution_graph(json.loads(json.dumps(graph))).nodes == pruned.nodes
    try:
        from circuit_tracer.frontend import graph_models
    except ImportError:
        graph_models = None
    if graph_models is not None:
        graph_models.Model.model_validate(json.loads(json.dumps(graph)))
    fig = circuit_figure(pruned)
    assert len(fig.data) > 0


def test_circuit_tracers_viewer_draws_a_feature_circuit(circuit, tmp_path):
    """Feature and error nodes at their token positions, exported and opened in circuit-tracer's own
    viewer (``browser.check_circuit_tracer_draws``)."""
    pytest.importorskip("circuit_tracer")
    pruned = top_features(circuit, 8)
    assert {"feature", "error", "input", "logits"} <= {names.parse_node(n).kind for n in pruned.nodes}
    (tmp_path / "data").mkdir()
    save_circuit(pruned, tmp_path / "data" / "features.json", "attribution-graph")
    browser.check_circuit_tracer_draws(tmp_path / "data", "features", tmp_path)


def test_spearman_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    a, b = [1.0, 3.0, 2.0, 2.0, 5.0, 0.5], [2.0, 1.0, 4.0, 4.0, 6.0, 0.0]
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)
