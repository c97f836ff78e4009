"""Edge selection beside top-k (circuitkit.circuit.selection): bootstrap sign-consistency, the
positive / negative ratio rule and the ILP, each checked against a slow or hand computation."""

from __future__ import annotations

import itertools

import networkx as nx
import pytest
import torch

import circuitkit as ck
from circuitkit import names
from circuitkit.ablation.edges import graph_edges
from circuitkit.circuit.selection import (
    SELECTIONS,
    bootstrap_indices,
    check_selection_args,
    ilp_edges,
    mean_scores,
    ratio_edges,
    select_edges,
)
from circuitkit.cli import main
from circuitkit.errors import InputError, UnknownNameError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained():
    model = ck.load_model("zoo:induction-trained")
    return model, ck.zoo_task("induction-trained", model).subset(list(range(16)))


@pytest.fixture(scope="module")
def handbuilt():
    model = ck.load_model("zoo:induction-handbuilt")
    return model, ck.zoo_task("induction-handbuilt", model)


def test_bootstrap_indices_resample_rows_with_replacement():
    runs = bootstrap_indices(16, 5, seed=3)
    assert len(runs) == 5 and all(len(r) == 16 and all(0 <= i < 16 for i in r) for r in runs)
    assert runs == bootstrap_indices(16, 5, seed=3) and runs != bootstrap_indices(16, 5, seed=4)
    assert any(len(set(r)) < 16 for r in runs)  # drawn with replacement: repeats
    assert len({tuple(r) for r in runs}) == 5


def test_bootstrap_keeps_exactly_the_sign_consistent_edges(trained):
    model, task = trained
    n_resamples, agreement, seed = 5, 0.8, 1
    args = {"n_resamples": n_resamples, "agreement": agreement, "seed": seed, "fill": False}
    n_total = len(graph_edges(model))
    circuit = ck.discover(model, task, "eap", top_k=n_total, selection="bootstrap", selection_args=args,
                          route_cap=False)
    # the slow way: score each resample of the task's rows, count the signs edge by edge
    runs = [ck.eap(model, task.subset(rows), progress=False).as_dict()
            for rows in bootstrap_indices(len(task), n_resamples, seed)]
    labels = list(runs[0])
    mean = {e: sum(r[e] for r in runs) / n_resamples for e in labels}
    share = {}
    for e in labels:
        sign = (mean[e] > 0) - (mean[e] < 0)
        share[e] = 0.0 if sign == 0 else sum(((r[e] > 0) - (r[e] < 0)) == sign for r in runs) / n_resamples
    consistent = {e for e in labels if share[e] >= agreement}
    assert 0 < len(consistent) < len(labels)  # the test separates something
    for e in labels:
        data = circuit.edge_data(e)
        assert data["sign_agreement"] == pytest.approx(share[e])
        assert data["score"] == pytest.approx(mean[e], rel=1e-4, abs=1e-6)  # scores: the resamples' mean
    assert circuit.meta["n_consistent"] == len(consistent)
    assert set(circuit.edges) <= consistent  # no fill: only consistent edges, dangling ones pruned
    assert set(circuit.edges) == set(ck.Circuit.from_nodes_edges(edges=sorted(consistent)).prune_dangling().edges)
    assert circuit.meta["selection"] == "bootstrap" and circuit.meta["selection_args"]["n_resamples"] == n_resamples
    # the budget ranks the survivors by |mean score|, then (fill) the others
    scores = ck.Scores.from_dict(mean, "eap")
    resamples = [ck.Scores.from_dict(r, "eap") for r in runs]
    by_abs = sorted(labels, key=lambda e: (-abs(mean[e]), e))
    first = [e for e in by_abs if e in consistent]
    k = len(consistent) + 3
    picked = select_edges(scores, k, "bootstrap", resamples=resamples, agreement=agreement)
    assert picked == first + [e for e in by_abs if e not in consistent][:3]
    assert select_edges(scores, k, "bootstrap", resamples=resamples, agreement=agreement, fill=False) == first


def test_bootstrap_confidence_interval_rule():
    """The paper's test: keep an edge when mean ± z * std / sqrt(B) excludes 0."""
    labels = ["input->logits", "a0.h0->logits", "input->a0.h0<v>"]
    values = [[1.0, -0.2, 0.0], [1.2, 0.3, 0.0], [0.9, -0.1, 0.0], [1.1, -0.4, 0.0]]
    runs = [ck.Scores(v, labels, "eap") for v in values]
    mean = mean_scores(runs)
    kept = select_edges(mean, 3, "bootstrap", resamples=runs, confidence=0.95, fill=False)
    assert kept == ["input->logits"]  # a0.h0->logits: mean -0.1, std 0.31 -> the interval holds 0


def test_ratio_rule_equals_a_hand_computation():
    s = ck.Scores([0.5, -0.4, 0.3, -0.2, 0.1, -0.05],
                  ["input->logits", "a0.h0->logits", "input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>",
                   "a0.h0->a1.h0<v>"], "eap")
    # n = 5, ratio 0.4: int(2) most needed by signed score (most negative: m(ablated) - m(clean)),
    # then 3 more by |score| among the rest
    assert ratio_edges(s, 5, 0.4) == ["a0.h0->logits", "input->a0.h0<k>", "input->logits", "input->a0.h0<q>",
                                      "input->a0.h0<v>"]
    # sign="mib": the most positive are the needed ones
    assert ratio_edges(s, 3, 0.7, sign="mib") == ["input->logits", "input->a0.h0<q>", "a0.h0->logits"]
    assert ratio_edges(s, 3, 0.0) == [label for label, _ in s.top(3)]  # ratio 0: top-k by |score|
    assert ratio_edges(s, 2, 1.0) == ["a0.h0->logits", "input->a0.h0<k>"]  # ratio 1: signed top-k
    assert select_edges(s, 5, "ratio", ratio=0.4) == ratio_edges(s, 5, 0.4)


def _connected(edges) -> bool:
    """Every edge lies on an input -> logits path of the chosen edges."""
    parsed = [names.parse_edge(e) for e in edges]
    g = nx.DiGraph([(e.parent, e.child) for e in parsed])
    return all("input" in g and "logits" in g and nx.has_path(g, "input", e.parent) and nx.has_path(g, e.child, "logits")
               for e in parsed)


@pytest.mark.parametrize("by_abs", [True, False])
def test_ilp_equals_brute_force_on_a_tiny_graph(by_abs):
    edges = names.all_edges(2, 1, has_mlp=False)  # 12 edges: 2^12 subsets
    assert len(edges) == 12
    values = torch.randn(len(edges), generator=torch.Generator().manual_seed(0))
    scores = ck.Scores(values, edges, "eap")
    weight = dict(zip(edges, (values.abs() if by_abs else -values).tolist(), strict=True))
    feasible = [set(c) for r in range(len(edges) + 1) for c in itertools.combinations(edges, r) if _connected(c)]
    for n in range(len(edges) + 1):
        best = max((c for c in feasible if len(c) <= n), key=lambda c: sum(weight[e] for e in c))
        chosen = ilp_edges(scores, n, by_abs=by_abs)
        assert _connected(chosen) and len(chosen) <= n
        assert sum(weight[e] for e in chosen) == pytest.approx(sum(weight[e] for e in best), abs=1e-6)
        assert set(chosen) == best  # random scores: one optimum
        if chosen:  # nothing dangles: pruning keeps every chosen edge
            assert set(ck.Circuit.from_nodes_edges(edges=chosen).prune_dangling().edges) == set(chosen)


def test_ilp_refuses_above_its_size_limit_before_any_work(handbuilt, monkeypatch):
    import circuitkit.circuit.discovery.pipeline as pipeline

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr(pipeline, "EdgeEvaluator", no_work)
    monkeypatch.setattr(pipeline, "score_edges", no_work)
    model, task = handbuilt
    with pytest.raises(InputError, match=r"81 edges, over its limit max_edges=50.*max_edges': 81"):
        ck.discover(model, task, "eap", selection="ilp", selection_args={"max_edges": 50})
    with pytest.raises(InputError, match="max_edges=3"):
        ilp_edges(ck.Scores([1.0] * 5, names.all_edges(1, 1, has_mlp=False), "eap"), 2, max_edges=3)


def test_discover_with_each_selection_records_it(handbuilt):
    model, task = handbuilt
    scores = ck.eap(model, task, progress=False)
    for name, args in (("ilp", None), ("ratio", {"ratio": 0.5})):
        circuit = ck.discover(model, task, "eap", top_k=4, scores=scores, selection=name, selection_args=args)
        assert circuit.meta["selection"] == name and len(circuit.edges) <= 4
        faithful = ck.discover(model, task, "eap", scores=scores, selection=name, selection_args=args, target=0.9)
        assert faithful.meta["faithfulness"] >= 0.9 and faithful.meta["target"] == 0.9
    ilp = ck.discover(model, task, "eap", top_k=4, scores=scores, selection="ilp", route_cap=False)
    assert set(ilp.edges) == set(ilp_edges(scores, 4))
    assert ck.discover(model, task, "eap", scores=scores, top_k=4).meta["selection"] == "top-k"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"selection": "topk"}, UnknownNameError, "unknown edge selection 'topk'; choose one of"),
    ({"selection": "bootstrap", "selection_args": {"resamples": 3}}, InputError, "takes no \\['resamples'\\]"),
    ({"selection": "bootstrap", "selection_args": {"n_resamples": 1}}, InputError, "n_resamples must be"),
    ({"selection": "ratio"}, InputError, "needs the share"),
    ({"selection": "ratio", "selection_args": {"ratio": 1.5}}, InputError, "ratio must be a fraction"),
    ({"selection": "bootstrap", "threshold": 0.1}, InputError, "not threshold"),
    ({"selection": "bootstrap", "scores": "given"}, InputError, "drop scores"),
    ({"selection": "ilp", "level": "layers"}, InputError, "level='layers'"),
    ({"selection": "ratio", "selection_args": {"ratio": 0.5}, "method": "acdc"}, InputError, "prunes by itself"),
])
def test_bad_selections_are_refused_naming_the_fix(handbuilt, kwargs, error, match):
    model, task = handbuilt
    kwargs = {"method": "eap", **kwargs}
    if kwargs.get("scores") == "given":
        kwargs["scores"] = ck.Scores([0.0], ["input->logits"], "eap")
    with pytest.raises(error, match=match):
        ck.discover(model, task, **kwargs)


def test_the_registry_lists_each_selection():
    assert tuple(SELECTIONS) == ("top-k", "bootstrap", "ratio", "ilp")
    assert check_selection_args("ilp")[1]["max_edges"] >= 81


def test_cli_selection_flags(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["discover", "zoo:induction-handbuilt", "--method", "eap", "--selection", "bootstrap",
                 "--selection-arg", "n_resamples=3", "--selection-arg", "agreement=1.0", "--top-k", "5",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "selection bootstrap" in printed and "sign-consistent" in printed
    circuit = ck.load_circuit(out)
    assert circuit.meta["selection"] == "bootstrap" and circuit.meta["selection_args"]["n_resamples"] == 3
    assert len(circuit.edges) <= 5
    assert main(["discover", "zoo:induction-handbuilt", "--selection", "ratio", "--selection-arg", "pnr=0.5",
                 "--out", str(tmp_path / "bad.json")]) == 2
    assert "takes no ['pnr']; it takes ratio, sign" in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()
    with pytest.raises(SystemExit):
        main(["discover", "zoo:induction-handbuilt", "--selection", "greedy", "--out", str(tmp_path / "x.json")])
