"""Circuit discovery: score edges with a method, then prune to a circuit.

Methods: ``eap-ig`` / ``eap`` / ``exact`` (edge scores from :mod:`circuitkit.patching.attribution`;
``exact`` patches one edge at a time, the ground truth the others approximate) and ``acdc`` (Conmy et al. 2023:
greedy edge pruning from the logits backwards).
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from circuitkit import names
from circuitkit.circuit.evaluate import EdgeEvaluator, evaluate, full_circuit, smallest_faithful
from circuitkit.circuit.graph import Circuit
from circuitkit.circuit.routes import cap_by_route
from circuitkit.scores import Scores

METHODS = ("eap-ig", "eap", "exact", "acdc")


def _kl_to(full_logits: torch.Tensor, task):
    from circuitkit.tasks.metrics import final_logits

    ref = final_logits(full_logits, task).float().log_softmax(-1)

    def kl(logits: torch.Tensor) -> float:
        logp = final_logits(logits, task).float().log_softmax(-1)
        return float(torch.nn.functional.kl_div(logp, ref, log_target=True, reduction="none").sum(-1).mean())

    return kl


def acdc(model, task, threshold: float = 0.01, ablation: str = "corrupted", metric: str = "kl", seed: int = 0,
         progress: bool = False) -> Circuit:
    """ACDC (Conmy et al. 2023): visit nodes from the logits backwards (reverse topological order);
    for each incoming edge, ablate it and keep it ablated if the damage grows by less than
    ``threshold``.

    ``metric="kl"``: damage = KL(full model || circuit) at the answer position (the paper's
    default). ``metric="task"``: damage = drop of the task metric. Each edge's ``score`` is the
    damage its removal would have caused when it was tried (None for edges skipped because their
    child no longer reaches the logits). Edges off every ``input -> logits`` path are pruned.
    """
    from circuitkit.patching import graph as edge_graph

    if threshold < 0:
        raise ValueError(f"ACDC threshold must be >= 0, got {threshold}")
    if metric not in ("kl", "task"):
        raise ValueError(f"ACDC metric must be 'kl' or 'task', got {metric!r}")
    task.check_model(model)
    edges = edge_graph.graph_edges(model)
    source = edge_graph.ablation_source(model, task, kind=ablation, seed=seed)
    with torch.no_grad():
        full_logits = model(task.clean)
    kl = _kl_to(full_logits, task)

    def damage(keep: set[str]) -> float:
        with torch.no_grad():
            logits = edge_graph.run_with_edges(model, task.clean, keep_edges=keep, source=source)
        return kl(logits) if metric == "kl" else -float(task.score(logits))

    incoming: dict[str, list[str]] = {}
    for edge in edges:
        incoming.setdefault(names.parse_edge(edge).child, []).append(edge)
    order = names.sort_nodes(edge_graph.graph_nodes(model), model.cfg.n_layers)
    kept, tried = set(edges), {}
    current = damage(kept)
    bar = tqdm(total=len(edges), desc="acdc", disable=not progress)
    for child in reversed(order):
        parents = incoming.get(child, [])
        if child != names.LOGITS and not any(names.parse_edge(e).parent == child for e in kept):
            kept -= set(parents)  # the node reaches nothing: its inputs cannot matter
            bar.update(len(parents))
            continue
        for edge in reversed(parents):  # latest parents first, as ACDC does
            trial = kept - {edge}
            value = damage(trial)
            tried[edge] = value - current
            if value - current < threshold:
                kept, current = trial, value
            bar.update(1)
    bar.close()
    scores = Scores(torch.tensor([tried.get(e, float("nan")) for e in edges]), edges, "acdc", task=task.name,
                    metric="kl" if metric == "kl" else task.metric_name,
                    meta={"threshold": threshold, "ablation": ablation, **Circuit.for_model(model)})
    circuit = Circuit.from_scores(scores, **Circuit.for_model(model))
    for edge in edges:
        data = circuit.edge_data(edge)
        if edge not in tried:
            data.update(score=None, sign=None)
    circuit = circuit.with_members(kept, "edge", prune=True)
    circuit.meta.update(threshold=threshold, ablation=ablation, acdc_metric=metric, damage=current)
    return circuit


def score_edges(model, task, method: str, steps: int = 10, ablation: str = "corrupted", progress: bool = False,
                interpolate: str = "inputs") -> Scores:
    """Edge scores from ``method``: ``eap-ig``, ``eap`` or ``exact`` (see
    :mod:`circuitkit.patching.attribution`; a score estimates m(edge ablated) - m(clean)).
    ``interpolate``: EAP-IG's path, ``"inputs"`` or ``"activations"`` (see ``eap_ig``)."""
    from circuitkit.patching import attribution

    if method == "exact":
        return attribution.exact_edge_patching(model, task, ablation=ablation, progress=progress)
    if method == "eap-ig":
        return attribution.eap_ig(model, task, steps=steps, ablation=ablation, progress=progress,
                                  interpolate=interpolate)
    if method == "eap":
        return attribution.eap(model, task, ablation=ablation, progress=progress)
    raise ValueError(f"unknown edge-scoring method {method!r}; choose one of 'eap-ig', 'eap', 'exact'")


def discover(model, task, method: str = "eap-ig", *, top_k: int | None = None, threshold: float | None = None,
             target: float = 0.9, ablation: str = "mean", steps: int = 10, route_cap: bool = True,
             scores: Scores | None = None, progress: bool = False, interpolate: str = "inputs") -> Circuit:
    """Score the model's edges with ``method`` and prune: ``top_k`` edges, or every edge with
    |score| >= ``threshold``, or (neither given) the smallest top-|score| circuit reaching
    ``target`` faithfulness under ``ablation``. ``acdc`` prunes by itself (``threshold`` is its tau).
    Edges are scored with the same ablation they are evaluated with.

    ``route_cap`` (default): rank by :func:`~circuitkit.circuit.routes.cap_by_route` scores, each
    edge's |score| capped by the widest route from its receiver to the logits, so that edges into
    heads the output does not need rank by what they can pass on (the circuit's edge scores are
    then the capped ones; ``score_edges`` gives the raw estimates). ``scores``: edge scores already
    computed by ``method`` with this ``ablation`` (from :func:`score_edges`), to prune without
    scoring again.

    ``interpolate``: EAP-IG's integration path, the input embeddings (``"inputs"``) or each
    layer's outputs in turn (``"activations"``; see :func:`circuitkit.patching.attribution.eap_ig`).

    The circuit's ``meta`` records the evaluation (faithfulness, completeness) and seconds taken.
    """
    if method not in METHODS:
        raise ValueError(f"unknown discovery method {method!r}; choose one of {METHODS}")
    if top_k is not None and threshold is not None:
        raise ValueError("give top_k or threshold, not both")
    task.check_model(model)
    start = time.perf_counter()
    if method == "acdc":
        if top_k is not None or scores is not None:
            raise ValueError("ACDC scores and prunes by itself; drop top_k / scores (or pick another method)")
        circuit = acdc(model, task, 0.01 if threshold is None else threshold, ablation=ablation, progress=progress)
        ev = EdgeEvaluator(model, task, ablation)
    else:
        if scores is None:
            scores = score_edges(model, task, method, steps=steps, ablation=ablation, progress=progress,
                                 interpolate=interpolate)
        elif not scores.is_edge:
            raise ValueError("discover prunes edges: pass edge Scores (from score_edges), not node scores")
        if route_cap:
            scores = cap_by_route(scores)
        ev = EdgeEvaluator(model, task, ablation)
        if top_k is not None:
            circuit = full_circuit(scores, model, ev.model_edges).top_k(top_k)
        elif threshold is not None:
            circuit = full_circuit(scores, model, ev.model_edges).threshold(threshold)
        else:
            circuit = smallest_faithful(model, task, scores, target=target, evaluator=ev)
    result = evaluate(model, task, circuit, evaluator=ev)
    circuit.meta.update(faithfulness=result.faithfulness, completeness=result.completeness, ablation=ablation,
                        seconds=time.perf_counter() - start, discovery=method,
                        route_cap=bool(route_cap and method != "acdc"))
    if method == "eap-ig":
        circuit.meta["interpolate"] = scores.meta.get("interpolate", interpolate)
    return circuit
