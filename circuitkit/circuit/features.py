"""Feature circuits: the feature graph as a `Circuit`, and its faithfulness by ablating features.

`feature_circuit` runs `circuitkit.sae.graph.feature_graph` (SAEs / transcoders spliced
at several sites, error terms kept) and returns a ``Circuit`` whose nodes are features
``f{L}.{site}.{i}@{pos}``, error nodes ``e{L}.{site}@{pos}``, ``input@{pos}`` and ``logits``
(no ``@pos`` when aggregated over positions), with node and edge scores; prune it with
``threshold`` / ``top_k`` (node or edge level) as any circuit.

`evaluate_feature_circuit` sets every feature outside the circuit to its mean over the clean
prompts (at its position) and measures ``f(C) = (m(C) - m(∅)) / (m(full) - m(∅))``; error nodes
are kept or ablated as ``errors`` says. `check_estimates` compares the estimates with
exact patching on a sample (Spearman).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from circuitkit import names
from circuitkit.circuit.core import Circuit, node_attrs
from circuitkit.circuit.io.attribution_graph import example_prompt
from circuitkit.errors import InputError
from circuitkit.sae.graph import METHODS as GRAPH_METHODS
from circuitkit.sae.graph import (
    Baseline,
    FeatureGraph,
    exact_edge_effects,
    exact_node_effects,
    feature_graph,
    resolve_baseline,
    run_with_features,
)
from circuitkit.sae.linear import linear_feature_graph
from circuitkit.sae.splice import make_sites
from circuitkit.tasks.metrics import normalized
from circuitkit.tokenizers import check_token_ids

ERROR_MODES = ("circuit", "keep", "ablate")
# feature_circuit's estimators: Marks et al.'s (sae.graph) and the exact linear transcoder graph
FEATURE_CIRCUIT_METHODS = (*GRAPH_METHODS, "linear")


def graph_circuit(graph: FeatureGraph, model=None) -> Circuit:
    """A `Circuit` of the graph's candidate nodes (with their scores) and its edges."""
    shape = Circuit.for_model(model) if model is not None else {}
    circuit = Circuit(method=graph.nodes.method, task=graph.nodes.task,
                      meta={"metric": graph.nodes.metric, "baseline": graph.baseline, "positions": graph.positions,
                            "sites": json.dumps([s.hook_out for s in graph.sites]),
                            "level_unit": "feature"}, **shape)
    circuit.add_edges(zip(graph.edges.labels, graph.edges.values.tolist(), strict=True), graph.edges.method,
                      graph.edges.task, True)
    scores = dict(zip(graph.nodes.labels, graph.nodes.values.tolist(), strict=True))
    for node in graph.candidates:
        score = scores.get(node)
        if node in circuit.graph:
            circuit.graph.nodes[node].update(score=score, sign=node_attrs(node, score)["sign"])
        else:
            circuit.graph.add_node(node, **node_attrs(node, score, graph.nodes.method, graph.nodes.task, True))
    circuit.validate()
    return circuit


def feature_circuit(model, saes, task, **kwargs) -> Circuit:
    """The feature graph of ``task`` as a `Circuit` (``kwargs``: see
    `feature_graph`: ``method``, ``steps``, ``baseline``,
    ``positions``, ``node_threshold``, ``max_nodes``). ``circuit.meta["example_prompt"]`` holds
    the prompt with the latest answer (every node's position lies within it), so the circuit
    exports to circuit-tracer's attribution graph.

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=32))  # untrained
        >>> sae.cfg.metadata.hook_name = ck.names.hook("resid_pre", 1)
        >>> task = ck.zoo_task("induction-handbuilt", model, n_prompts=8)
        >>> circuit = ck.feature_circuit(model, [sae], task, method="ig", steps=3, max_nodes=10,
        ...                              progress=False)
        >>> sum(node.startswith("f1.resid_pre.") for node in circuit.nodes), circuit.nodes[-1]
        (10, 'logits')
    """
    if kwargs.get("method") == "linear":
        extra = sorted(set(kwargs) - {"method", "positions", "node_threshold", "max_nodes", "chunk", "progress"})
        if extra:
            raise InputError(f"method='linear' computes exact edges (no baseline, no IG steps); drop {extra}")
        kwargs.pop("method")
        graph = linear_feature_graph(model, saes, task, **kwargs)
    else:
        graph = feature_graph(model, saes, task, **kwargs)
    circuit = graph_circuit(graph, model)
    # nodes sit at positions up to the latest answer of any prompt: draw the graph over that prompt
    first_answer = task.answer_pos.reshape(len(task), -1)[:, 0]
    circuit.meta["example_prompt"] = example_prompt(model, task, int(first_answer.argmax()))
    circuit.meta["model"] = model.cfg.model_name
    return circuit


def top_features(circuit: Circuit, k: int | None = None, threshold: float | None = None) -> Circuit:
    """A copy keeping the ``k`` feature / error nodes of largest |score| (and / or those with
    |score| >= ``threshold``), the input positions with an edge into them, ``logits``, and the
    edges among them.

    Unlike ``circuit.top_k(k, level="node")`` the input positions (never ablated) do not count
    toward ``k``.
    """
    if k is None and threshold is None:
        raise InputError("give k (how many feature / error nodes to keep) and / or threshold (a |score| cut)")
    if k is not None and (not isinstance(k, int) or k < 0):
        raise InputError(f"k must be a non-negative integer, got {k!r}")
    g = circuit.graph
    ranked = sorted(((n, abs(d["score"])) for n, d in g.nodes(data=True)
                     if d["kind"] in ("feature", "error") and d["score"] is not None), key=lambda x: (-x[1], x[0]))
    if threshold is not None:
        ranked = [(n, s) for n, s in ranked if s >= threshold]
    if k is not None:
        ranked = ranked[:k]
    features = [n for n, _ in ranked]
    logits = [n for n, d in g.nodes(data=True) if d["kind"] == "logits"]
    receivers = set(features) | set(logits)
    # the input positions that feed what is kept (not those after the answer, which reach nothing)
    inputs = [n for n, d in g.nodes(data=True) if d["kind"] == "input" and any(c in receivers for c in g.successors(n))]
    return circuit.with_members(features + inputs + logits, level="node")


@dataclass
class FeatureCircuitEvaluation:
    """Faithfulness of a feature circuit (features outside it at their mean).

    ``completeness = 1 - f(complement)``: 1 when ablating the circuit's features alone removes the
    behaviour. ``error_share``: the share of the circuit's total |node score| on error nodes.
    """

    faithfulness: float
    completeness: float
    metric_circuit: float
    metric_complement: float
    metric_full: float
    metric_empty: float
    n_features: int
    n_errors: int
    error_share: float | None
    errors: str
    task: str

    def to_dict(self) -> dict:
        return asdict(self)


def _masks(circuit: Circuit, sites, n_pos: int):
    index = {(s.layer, s.short): i for i, s in enumerate(sites)}
    acts = {i: torch.zeros(n_pos, s.d_sae, dtype=torch.bool) for i, s in enumerate(sites)}
    errs = {i: torch.zeros(n_pos, dtype=torch.bool) for i in range(len(sites))}
    n_feat = n_err = 0
    for node_id in circuit.nodes:
        node = names.parse_node(node_id)
        if node.kind not in ("feature", "error"):
            continue
        i = index.get((node.layer, node.hook))
        if i is None:
            raise InputError(f"circuit node {node_id!r} names no spliced site; the sites are "
                             f"{[names.error(s.layer, s.short) for s in sites]}")
        where = slice(None) if node.pos is None else node.pos
        if node.pos is not None and not 0 <= node.pos < n_pos:
            raise InputError(f"circuit node {node_id!r} is at position {node.pos}; the task's prompts have {n_pos}")
        if node.kind == "feature":
            acts[i][where, node.index] = True
            n_feat += 1
        else:
            errs[i][where] = True
            n_err += 1
    return acts, errs, n_feat, n_err


def evaluate_feature_circuit(model, saes, task, circuit: Circuit | Sequence[str], errors: str = "circuit",
                             baseline: str | Baseline | None = None) -> FeatureCircuitEvaluation:
    """Faithfulness and completeness of a feature circuit (or a list of its node ids).

    ``errors``: ``"circuit"`` keeps the error nodes in the circuit and ablates the rest (Marks et
    al.), ``"keep"`` keeps every error term (the features alone are judged), ``"ablate"`` ablates
    every error term. The empty circuit ablates every feature (and the errors ``errors`` ablates);
    the input is always kept. ``baseline``: what an ablated node takes, by default the one the
    circuit was found with (its ``meta["baseline"]``, else ``"mean"``), or a computed
    ``Baseline`` shared with discovery.

    Examples:
        >>> from sae_lens import StandardSAE, StandardSAEConfig
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=32))  # untrained
        >>> sae.cfg.metadata.hook_name = ck.names.hook("resid_pre", 1)
        >>> task = ck.zoo_task("induction-handbuilt", model, n_prompts=8)
        >>> circuit = ck.feature_circuit(model, [sae], task, method="ig", steps=3, max_nodes=10,
        ...                              progress=False)
        >>> result = ck.evaluate_feature_circuit(model, [sae], task, circuit)
        >>> result.n_features, result.errors, round(result.metric_full, 2)
        (10, 'circuit', 12.0)
    """
    if errors not in ERROR_MODES:
        raise InputError(f"errors must be one of {ERROR_MODES}, got {errors!r}")
    if not isinstance(circuit, Circuit):
        circuit = Circuit.from_nodes_edges(list(circuit), method="given", task=task.name)
    task.check_model(model)
    sites = make_sites(model, saes)
    clean = check_token_ids(model, task.clean)
    n_pos = clean.shape[1]
    if baseline is None:
        baseline = circuit.meta.get("baseline") or "mean"
    base = resolve_baseline(model, sites, task, baseline)
    acts, errs, n_feat, n_err = _masks(circuit, sites, n_pos)
    all_e = {i: torch.ones_like(e) for i, e in errs.items()}
    no_e = {i: torch.zeros_like(e) for i, e in errs.items()}
    no_a = {i: torch.zeros_like(a) for i, a in acts.items()}
    if errors == "circuit":
        errs_c, errs_comp, errs_empty = errs, {i: ~e for i, e in errs.items()}, no_e
    elif errors == "keep":
        errs_c = errs_comp = errs_empty = all_e
    else:
        errs_c = errs_comp = errs_empty = no_e

    def score(keep_acts, keep_errs) -> float:
        return float(task.score(run_with_features(model, sites, clean, base, keep_acts, keep_errs)))

    with torch.no_grad():
        full = float(task.score(model(clean)))
    m_c = score(acts, errs_c)
    m_comp = score({i: ~a for i, a in acts.items()}, errs_comp)
    m_empty = score(no_a, errs_empty)
    if abs(full - m_empty) < 1e-6:
        raise InputError(f"ablating every feature leaves task {task.name!r}'s metric at {full:.4g}; faithfulness is "
                         "undefined: the SAEs' features carry nothing of this behaviour (or errors='keep' keeps it all)")
    scored = [(n, circuit.graph.nodes[n]["score"]) for n in circuit.nodes
              if circuit.graph.nodes[n]["kind"] in ("feature", "error") and circuit.graph.nodes[n]["score"] is not None]
    total = sum(abs(s) for _, s in scored)
    err_total = sum(abs(s) for n, s in scored if circuit.graph.nodes[n]["kind"] == "error")
    return FeatureCircuitEvaluation(
        faithfulness=float(normalized(m_c, full, m_empty)),
        completeness=1.0 - float(normalized(m_comp, full, m_empty)),
        metric_circuit=m_c, metric_complement=m_comp, metric_full=full, metric_empty=m_empty,
        n_features=n_feat, n_errors=n_err, error_share=(err_total / total) if total > 0 else None,
        errors=errors, task=task.name)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(x):
        x = torch.as_tensor(list(x), dtype=torch.float64)
        order = torch.argsort(x)
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for v in torch.unique(x):  # ties share their mean rank
            tie = x == v
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else float("nan")


@dataclass
class EstimateCheck:
    """Estimates against exact patching on a sample of nodes and edges."""

    nodes: list[str]
    node_estimates: list[float]
    node_exact: list[float]
    edges: list[str]
    edge_estimates: list[float]
    edge_exact: list[float]
    node_spearman: float
    edge_spearman: float


def check_estimates(model, saes, task, graph: FeatureGraph | Circuit, n_nodes: int = 20, n_edges: int = 20,
                    seed: int = 0, progress: bool = False) -> EstimateCheck:
    """Spearman of estimates vs exact patching: the ``n/2`` largest estimates plus a random rest,
    over the candidate feature / error nodes and the graph's edges."""
    if isinstance(graph, Circuit):
        node_scores = {n: d["score"] for n, d in graph.graph.nodes(data=True) if d["score"] is not None}
        edge_scores = {k: d["score"] for _, _, k, d in graph.graph.edges(keys=True, data=True) if d["score"] is not None}
        baseline = graph.meta.get("baseline", "mean")
    else:
        cand = set(graph.candidates)
        node_scores = {n: v for n, v in zip(graph.nodes.labels, graph.nodes.values.tolist(), strict=True) if n in cand}
        edge_scores = dict(zip(graph.edges.labels, graph.edges.values.tolist(), strict=True))
        baseline = graph.baseline
    node_scores = {n: v for n, v in node_scores.items() if names.parse_node(n).kind in ("feature", "error")}
    rng = random.Random(seed)

    def sample(scores: dict[str, float], k: int) -> list[str]:
        ranked = sorted(scores, key=lambda x: (-abs(scores[x]), x))
        top = ranked[:k // 2]
        rest = ranked[k // 2:]
        return top + rng.sample(rest, min(len(rest), k - len(top)))

    nodes, edges = sample(node_scores, n_nodes), sample(edge_scores, n_edges)
    exact_n = exact_node_effects(model, saes, task, nodes, baseline=baseline, progress=progress).values.tolist()
    exact_e = exact_edge_effects(model, saes, task, edges, baseline=baseline, progress=progress).values.tolist()
    est_n = [node_scores[n] for n in nodes]
    est_e = [edge_scores[e] for e in edges]
    return EstimateCheck(nodes, est_n, exact_n, edges, est_e, exact_e, spearman(est_n, exact_n),
                         spearman(est_e, exact_e) if edges else float("nan"))
