"""Discovery as one call: score every edge with a method, then prune to a circuit and evaluate it.

Methods: ``eap-ig`` / ``eap`` / ``exact`` (edge scores from :mod:`circuitkit.attribution`; ``exact``
patches one edge at a time, the ground truth the others approximate), ``edge-pruning`` (a learned
edge mask, :mod:`circuitkit.circuit.discover.edge_pruning`) and ``acdc``
(:mod:`circuitkit.circuit.discover.acdc`).
"""

from __future__ import annotations

import math
import time

from circuitkit import attribution
from circuitkit.ablation.kinds import DEFAULT_ABLATION
from circuitkit.circuit.core import Circuit
from circuitkit.circuit.discover.acdc import acdc
from circuitkit.circuit.discover.edge_pruning import edge_pruning
from circuitkit.circuit.evaluate import (
    EdgeEvaluator,
    evaluate,
    full_circuit,
    scores_by_pos,
    smallest_faithful,
)
from circuitkit.circuit.io.attribution_graph import example_prompt
from circuitkit.circuit.layers import LAYER_METHODS, LayerEvaluator, score_layers
from circuitkit.circuit.routes import cap_by_route
from circuitkit.scores import Scores

METHODS = ("eap-ig", "eap", "exact", "edge-pruning", "acdc")
BY_POS_METHODS = ("eap-ig", "eap", "exact")  # the methods that score edges at each token position
LEVELS = ("edges", "layers")


def score_edges(model, task, method: str, steps: int = 10, ablation: str = DEFAULT_ABLATION, progress: bool = False,
                interpolate: str = "inputs", by_pos: bool = False) -> Scores:
    """Edge scores from ``method``: ``eap-ig``, ``eap`` or ``exact`` (see
    :mod:`circuitkit.attribution.edge`; a score estimates m(edge ablated) - m(clean)).
    ``interpolate``: EAP-IG's path, ``"inputs"``, ``"activations"`` or ``"mask"`` (see ``eap_ig``).
    ``by_pos``: one score per edge and token position (``a0.h0@3->a1.h0@3<k>``; not for
    ``edge-pruning``)."""
    if by_pos and method not in BY_POS_METHODS:
        raise ValueError(f"by_pos scores edges at each position with {BY_POS_METHODS}, not {method!r}")
    if method == "exact":
        return attribution.exact_edge_patching(model, task, ablation=ablation, progress=progress, by_pos=by_pos)
    if method == "eap-ig":
        return attribution.eap_ig(model, task, steps=steps, ablation=ablation, progress=progress,
                                  interpolate=interpolate, by_pos=by_pos)
    if method == "eap":
        return attribution.eap(model, task, ablation=ablation, progress=progress, by_pos=by_pos)
    if method == "edge-pruning":
        return edge_pruning(model, task, ablation=ablation, progress=progress)
    raise ValueError(f"unknown edge-scoring method {method!r}; choose one of 'eap-ig', 'eap', 'exact', "
                     "'edge-pruning'")


def discover(model, task, method: str = "eap-ig", *, top_k: int | None = None, threshold: float | None = None,
             target: float = 0.9, ablation: str = DEFAULT_ABLATION, steps: int = 10, route_cap: bool = True,
             scores: Scores | None = None, progress: bool = False, interpolate: str | None = None,
             by_pos: bool = False, level: str = "edges") -> Circuit:
    """Score the model's edges with ``method`` and prune: ``top_k`` edges, or every edge with
    |score| >= ``threshold``, or (neither given) the smallest top-|score| circuit reaching
    ``target`` faithfulness under ``ablation``. ``acdc`` prunes by itself (``threshold`` is its tau).
    Edges are scored with the same ablation they are evaluated with.

    ``route_cap`` (default): rank by :func:`~circuitkit.circuit.routes.cap_by_route` scores, each
    edge's |score| capped by the widest route from its receiver to the logits, so that edges into
    heads the output does not need rank by what they can pass on (the circuit's edge scores are
    then the capped ones, and each edge keeps the estimator's value as ``raw_score``, which
    :func:`~circuitkit.circuit.io.to_mib` exports by default). ``scores``: edge scores already
    computed by ``method`` with this ``ablation`` (from :func:`score_edges`), to prune without
    scoring again.

    ``interpolate``: EAP-IG's integration path, the input embeddings (``"inputs"``), each
    layer's outputs in turn (``"activations"``) or every edge's mask at once (``"mask"``; see
    :func:`circuitkit.attribution.eap_ig`).

    ``by_pos``: a position-resolved circuit, edges between (node, position) pairs
    (``a0.h0@3->a1.h0@3<k>``), scored, pruned and evaluated on the position-resolved graph (an
    edge outside the circuit is ablated at that position only; see
    :mod:`circuitkit.circuit.evaluate`). Methods :data:`BY_POS_METHODS`.

    ``level="layers"``: a circuit of whole attention blocks and MLPs (nodes ``attn_out.L``,
    ``m{L}``; :mod:`circuitkit.circuit.layers`), for models whose heads do not separate (the edge
    graph refuses them by name) or a first coarse look; methods :data:`LAYER_METHODS`, EAP-IG along
    the nodes' ablation masks. ``top_k`` / ``threshold`` / ``target`` then count nodes.

    The circuit's ``meta`` records the evaluation (faithfulness, completeness) and seconds taken.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; choose one of {LEVELS}")
    if level == "layers":
        return _discover_layers(model, task, method, top_k=top_k, threshold=threshold, target=target,
                                ablation=ablation, steps=steps, scores=scores, progress=progress,
                                interpolate=interpolate, by_pos=by_pos)
    interpolate = "inputs" if interpolate is None else interpolate
    if method not in METHODS:
        raise ValueError(f"unknown discovery method {method!r}; choose one of {METHODS}")
    if by_pos and method not in BY_POS_METHODS:
        raise ValueError(f"by_pos discovers position-resolved circuits with {BY_POS_METHODS}, not {method!r}")
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
                                 interpolate=interpolate, by_pos=by_pos)
        elif not scores.is_edge:
            raise ValueError("discover prunes edges: pass edge Scores (from score_edges), not node scores")
        elif scores_by_pos(scores) != by_pos:
            raise ValueError(f"scores are {'' if scores_by_pos(scores) else 'not '}position-resolved; pass "
                             f"by_pos={scores_by_pos(scores)} with them")
        raw = scores
        if route_cap:
            scores = cap_by_route(scores)
        ev = EdgeEvaluator(model, task, ablation, by_pos=by_pos)
        if top_k is not None:
            circuit = full_circuit(scores, model, ev.model_edges).top_k(top_k)
        elif threshold is not None:
            circuit = full_circuit(scores, model, ev.model_edges).threshold(threshold)
        else:
            circuit = smallest_faithful(model, task, scores, target=target, evaluator=ev)
    if method != "acdc" and route_cap:
        for label, value in raw.as_dict().items():  # the estimator's own values, for exports (MIB)
            circuit.edge_data(label)["raw_score"] = float(value)
    circuit.meta.setdefault("d_model", int(model.cfg.d_model))
    circuit.meta.setdefault("example_prompt", example_prompt(model, task))  # for attribution-graph exports
    result = evaluate(model, task, circuit, evaluator=ev)
    circuit.meta.update(faithfulness=result.faithfulness, completeness=result.completeness, ablation=ablation,
                        seconds=time.perf_counter() - start, discovery=method,
                        route_cap=bool(route_cap and method != "acdc"), by_pos=by_pos)
    if method == "eap-ig":
        circuit.meta["interpolate"] = scores.meta.get("interpolate", interpolate)
    return circuit


def _discover_layers(model, task, method: str, *, top_k, threshold, target, ablation, steps, scores, progress,
                     interpolate, by_pos) -> Circuit:
    if method not in LAYER_METHODS:
        raise ValueError(f"level='layers' scores whole attention blocks and MLPs with {LAYER_METHODS}, not "
                         f"{method!r}")
    if by_pos:
        raise ValueError("level='layers' finds circuits of whole layers' outputs; drop by_pos")
    if interpolate not in (None, "mask"):
        raise ValueError(f"level='layers' integrates EAP-IG along the nodes' ablation masks; drop interpolate "
                         f"({interpolate!r}) or pass 'mask'")
    if top_k is not None and threshold is not None:
        raise ValueError("give top_k or threshold, not both")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative number of nodes, got {top_k!r}")
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if top_k is None and threshold is None and not 0 < target <= 1:
        raise ValueError(f"target faithfulness must be in (0, 1], got {target}")
    task.check_model(model)
    start = time.perf_counter()
    ev = LayerEvaluator(model, task, ablation)
    if scores is None:
        scores = score_layers(model, task, method, steps=steps, progress=progress, evaluator=ev)
    elif scores.is_edge or sorted(scores.labels) != sorted(ev.nodes):
        raise ValueError("level='layers' prunes layer nodes: pass the Scores of score_layers for this model")
    ranked = [label for _, label in sorted(zip((-abs(v) for v in scores.values.tolist()), scores.labels,
                                               strict=True))]
    if top_k is not None:
        keep = ranked[:top_k]
    elif threshold is not None:
        keep = [n for n, v in zip(scores.labels, scores.values.tolist(), strict=True) if abs(v) >= threshold]
    else:  # a handful of nodes: every size is tried, the exact minimum
        keep = ranked[:next(n for n in range(len(ranked) + 1) if ev.faithfulness(ranked[:n]) >= target)]
    circuit = Circuit.from_scores(scores, n_layers=int(model.cfg.n_layers), n_heads=int(model.cfg.n_heads),
                                  has_mlp=not model.cfg.attn_only)
    circuit = circuit.with_members(keep, "node", prune=False)
    result = evaluate(model, task, circuit, evaluator=ev)
    circuit.meta.update(faithfulness=result.faithfulness, completeness=result.completeness, ablation=ablation,
                        seconds=time.perf_counter() - start, discovery=method, level="layers", route_cap=False,
                        by_pos=False, d_model=int(model.cfg.d_model))
    if top_k is None and threshold is None:
        circuit.meta.update(target=target, selection="smallest_faithful")
    if method == "eap-ig":
        circuit.meta.update(interpolate="mask", steps=steps)
    return circuit
