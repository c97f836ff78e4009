"""Exact linear feature graphs (circuit-tracer's construction): with transcoders in place of the
MLPs and attention patterns / norm scales frozen, every edge is exact, which the tests check
against explicit recomputations of the same linear map."""

from __future__ import annotations

import pytest
import torch

from circuitkit import names
from circuitkit.circuit.features import feature_circuit
from circuitkit.sae.linear import (
    frozen_nonlinearities,
    linear_feature_graph,
    recorded_preactivations,
)
from circuitkit.sae.splice import make_sites, splice_run
from circuitkit.tasks.builders import ioi


def _transcoder(layer: int, d_model: int, d_sae: int, seed: int):
    from sae_lens import Transcoder, TranscoderConfig

    torch.manual_seed(seed)
    tc = Transcoder(TranscoderConfig(d_in=d_model, d_sae=d_sae, d_out=d_model, apply_b_dec_to_input=False))
    with torch.no_grad():
        tc.b_enc.uniform_(-0.1, 0.3)
        tc.b_dec.uniform_(-0.1, 0.1)
    tc.cfg.metadata.hook_name = f"blocks.{layer}.ln2.hook_normalized"
    tc.cfg.metadata.hook_name_out = f"blocks.{layer}.hook_mlp_out"
    return tc


@pytest.fixture(scope="module")
def saes(tiny_model, random_sae):
    d = tiny_model.cfg.d_model
    return [_transcoder(0, d, 12, seed=5), random_sae(d, 10, "blocks.1.hook_resid_pre", seed=1),
            _transcoder(1, d, 10, seed=6)]


@pytest.fixture(scope="module")
def task(word_tokenizer):
    return ioi(word_tokenizer, n_prompts=2)


@pytest.fixture(scope="module")
def graph(tiny_model, saes, task):
    return linear_feature_graph(tiny_model, saes, task, progress=False)


def _values(model, sites, task, values=None, zero=None, hold=None):
    """Every site's pre-activation ``{i: [batch, pos, d_sae]}``, the metric and the frozen patterns /
    scales (at ``values`` if given). ``hold``: a splice record whose features and errors every site
    keeps (so only direct effects move); ``zero``: the sources set to 0, ``"all"`` or one node id."""
    tokens = task.clean
    node = names.parse_node(zero) if zero not in (None, "all") else None

    def intervene(i, acts, err):
        if hold is not None:
            acts, err = hold.acts[i].clone(), hold.errors[i].clone()
        if zero == "all":
            return torch.zeros_like(acts), torch.zeros_like(err)
        if node is not None and node.kind != "input" and (node.layer, node.hook) == (sites[i].layer, sites[i].short):
            acts, err = acts.clone(), err.clone()
            if node.kind == "feature":
                acts[:, node.pos, node.index] = 0.0
            else:
                err[:, node.pos] = 0.0
        return acts, err

    x0 = None
    if zero == "all" or (node is not None and node.kind == "input"):
        _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_pre"])
        x0 = cache["blocks.0.hook_resid_pre"].clone()
        if zero == "all":
            x0[:] = 0.0
        else:
            x0[:, node.pos] = 0.0
    with torch.no_grad(), frozen_nonlinearities(model, values) as frozen, recorded_preactivations(sites) as pre, \
            splice_run(model, sites, intervene=intervene, input_value=x0) as rec:
        metric = float(task.score(model(tokens)))
    return {i: p.clone() for i, p in pre.items()}, metric, frozen, rec


def _incoming(graph) -> dict[str, float]:
    into: dict[str, float] = {}
    for label, value in zip(graph.edges.labels, graph.edges.values.tolist(), strict=True):
        child = names.parse_edge(label).child
        into[child] = into.get(child, 0.0) + value
    return into


def _pre_of(node_id, sites, pre):
    node = names.parse_node(node_id)
    i = next(k for k, s in enumerate(sites) if (s.layer, s.short) == (node.layer, node.hook))
    return float(pre[i][:, node.pos, node.index].sum())


def test_freezing_leaves_the_forward_pass_unchanged(tiny_model, saes, task):
    sites = make_sites(tiny_model, saes)
    with torch.no_grad():
        plain = tiny_model(task.clean)
        with frozen_nonlinearities(tiny_model) as frozen:
            frozen_logits = tiny_model(task.clean)
        with frozen_nonlinearities(tiny_model, frozen), splice_run(tiny_model, sites):
            replayed = tiny_model(task.clean)
    assert any(k.endswith("hook_pattern") for k in frozen) and any(k.endswith("ln1.hook_scale") for k in frozen)
    torch.testing.assert_close(frozen_logits, plain)
    torch.testing.assert_close(replayed, plain, atol=1e-5, rtol=1e-5)


def test_edges_into_every_node_sum_to_its_value_less_the_biases(tiny_model, saes, task, graph):
    # completeness: linear map f, f(x) - f(0) = sum of the sources' contributions (= -edge scores)
    sites = make_sites(tiny_model, saes)
    pre, metric, frozen, _ = _values(tiny_model, sites, task)
    pre0, metric0, *_ = _values(tiny_model, sites, task, values=frozen, zero="all")
    into = _incoming(graph)
    targets = [n for n in graph.candidates if names.parse_node(n).kind == "feature" and names.parse_node(n).layer == 1]
    assert len(targets) > 10
    for node in targets:
        assert -into.get(node, 0.0) == pytest.approx(_pre_of(node, sites, pre) - _pre_of(node, sites, pre0),
                                                    abs=2e-4, rel=2e-4)
    assert -into[names.LOGITS] == pytest.approx(metric - metric0, rel=1e-4, abs=1e-4)


def test_each_edge_equals_removing_its_source_alone(tiny_model, saes, task, graph):
    # the slow path: zero one source, every other node held at its value and patterns / scales frozen
    # at the prompt's, and read each target's change
    sites = make_sites(tiny_model, saes)
    pre, metric, frozen, clean = _values(tiny_model, sites, task)
    by_parent: dict[str, list[tuple[str, float]]] = {}
    for label, value in zip(graph.edges.labels, graph.edges.values.tolist(), strict=True):
        e = names.parse_edge(label)
        by_parent.setdefault(e.parent, []).append((e.child, value))
    parents = sorted(by_parent, key=lambda p: -max(abs(v) for _, v in by_parent[p]))[:4]
    parents += [p for p in by_parent if p.startswith(("e0", "input"))][:2]
    for parent in parents:
        pre_s, metric_s, *_ = _values(tiny_model, sites, task, values=frozen, zero=parent, hold=clean)
        for child, value in by_parent[parent]:
            if child == names.LOGITS:
                assert value == pytest.approx(metric_s - metric, rel=1e-3, abs=1e-4)
            else:
                assert value == pytest.approx(_pre_of(child, sites, pre_s) - _pre_of(child, sites, pre),
                                              rel=1e-3, abs=1e-4)


def test_node_scores_are_the_paths_through_the_edges(tiny_model, saes, task):
    # one prompt, ReLU dictionaries (slope 1 where active): in contributions c = -score,
    # c(s) = c(s->m) + sum_t c(s->t) c(t) / a_t, so score(s) = e(s->m) - sum_t e(s->t) score(t) / a_t
    one = task.subset([0])
    g = linear_feature_graph(tiny_model, saes, one, progress=False)
    sites = make_sites(tiny_model, saes)
    with torch.no_grad(), splice_run(tiny_model, sites) as rec:
        tiny_model(one.clean)
    node = g.nodes.as_dict()
    out: dict[str, dict[str, float]] = {}
    for label, value in zip(g.edges.labels, g.edges.values.tolist(), strict=True):
        e = names.parse_edge(label)
        out.setdefault(e.parent, {})[e.child] = value

    def act(n):
        p = names.parse_node(n)
        i = next(k for k, s in enumerate(sites) if (s.layer, s.short) == (p.layer, p.hook))
        return float(rec.acts[i][0, p.pos, p.index])

    checked = 0
    for parent, children in out.items():
        if abs(node[parent]) < 1e-4:
            continue
        total = sum(v if c == names.LOGITS else -v * node[c] / act(c) for c, v in children.items())
        assert total == pytest.approx(node[parent], rel=1e-3, abs=1e-5)
        checked += 1
    assert checked > 10


def test_refuses_a_model_that_is_not_linear_in_its_nodes(tiny_model, saes, task, word_tokenizer):
    with pytest.raises(ValueError, match=r"layers \[1\] have none"):
        linear_feature_graph(tiny_model, saes[:2], task, progress=False)
    with pytest.raises(ValueError, match="affine in the logits"):
        linear_feature_graph(tiny_model, saes, ioi(word_tokenizer, n_prompts=3, metric="answer_logprob"), progress=False)


def test_feature_circuit_takes_the_linear_method(tiny_model, saes, task):
    circuit = feature_circuit(tiny_model, saes, task.subset([0]), method="linear", max_nodes=4, progress=False)
    assert circuit.method == "feature-linear" and names.LOGITS in circuit.nodes
    assert any(names.parse_node(n).kind == "error" for n in circuit.nodes)
    with pytest.raises(ValueError, match="exact"):
        feature_circuit(tiny_model, saes, task, method="linear", steps=4)


def test_edges_equal_circuit_tracers_graph(word_tokenizer):
    """circuit-tracer's own graph of one prompt (``make_circuit_tracer_fixture.py``) on the same
    weights. Two conventions of theirs are left out of the comparison: features at the first
    position are dropped into that position's error node, and the embedding node is the token
    embedding alone (circuitkit's ``input`` adds the position embedding)."""
    import json
    from pathlib import Path

    from model_factory import make_model
    from sae_lens import Transcoder, TranscoderConfig
    from safetensors.torch import load_file

    data = Path(__file__).parent / "data"
    fixture = json.loads((data / "circuit_tracer_graph.json").read_text())
    weights = load_file(str(data / "circuit_tracer_weights.safetensors"))
    model = make_model(word_tokenizer)
    model.load_state_dict({k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")})
    transcoders = []
    for layer in range(model.cfg.n_layers):
        tc = Transcoder(TranscoderConfig(d_in=model.cfg.d_model, d_sae=fixture["d_transcoder"], d_out=model.cfg.d_model,
                                         apply_b_dec_to_input=False))
        with torch.no_grad():
            tc.W_enc.copy_(weights[f"transcoder.{layer}.W_enc"].T)  # circuit-tracer stores [d_transcoder, d_model]
            for k in ("W_dec", "b_enc", "b_dec"):
                getattr(tc, k).copy_(weights[f"transcoder.{layer}.{k}"])
        tc.cfg.metadata.hook_name = f"blocks.{layer}.{fixture['feature_input_hook']}"
        tc.cfg.metadata.hook_name_out = f"blocks.{layer}.hook_mlp_out"
        transcoders.append(tc)
    task = ioi(word_tokenizer, n_prompts=1)
    assert task.clean[0].tolist() == fixture["tokens"]
    graph = linear_feature_graph(model, transcoders, task, progress=False)
    ours = dict(zip(graph.edges.labels, graph.edges.values.tolist(), strict=True))

    def compared(edge: str) -> bool:
        parent, child = edge.split("->")
        if parent.startswith(("token", "input")):
            return False
        return all(names.parse_node(n).pos != 0 for n in (parent, child) if n != names.LOGITS)

    theirs = {e: v for e, v in fixture["edges"].items() if compared(e)}
    mine = {e: -v for e, v in ours.items() if compared(e)}  # circuit-tracer's sign: contributions
    assert len(theirs) > 1000 and set(mine) == set(theirs)
    scale = max(abs(v) for v in theirs.values())
    worst = max(abs(mine[e] - theirs[e]) for e in theirs)
    assert worst < 1e-5 * scale, (worst, scale)
