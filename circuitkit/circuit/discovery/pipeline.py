"""Discovery as one call: score every edge with a registered method, then prune to a circuit and
evaluate it, all from one prepared context (the `EdgeEvaluator`:
graph, ablation source, full and empty metrics, built once).

The methods are the records of `circuitkit.circuit.discovery.methods`: ``eap-ig`` / ``eap`` /
``exact`` (edge scores from `circuitkit.attribution`; ``exact`` patches one edge at a time,
the ground truth the others approximate), ``edge-pruning`` (a learned edge mask) and ``acdc``
(which prunes by itself).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from circuitkit.ablation.edges import graph_edges
from circuitkit.ablation.kinds import DEFAULT_ABLATION
from circuitkit.circuit.core import Circuit
from circuitkit.circuit.discovery.methods import (
    DISCOVERY_METHODS,
    DiscoveryMethod,
    check_method_args,
    discovery_method,
)
from circuitkit.circuit.evaluation import (
    EdgeEvaluator,
    evaluate,
    full_circuit,
    scores_by_pos,
    smallest_faithful,
)
from circuitkit.circuit.io.attribution_graph import example_prompt
from circuitkit.circuit.layers import LAYER_METHODS, LayerEvaluator, score_layers
from circuitkit.circuit.routes import cap_by_route
from circuitkit.circuit.selection import (
    bootstrap_scores,
    check_ilp_size,
    check_selection_args,
    mean_scores,
    selector,
    sign_agreement,
    sign_consistent,
    smallest_selected,
)
from circuitkit.errors import InputError
from circuitkit.scores import Scores

METHODS = tuple(DISCOVERY_METHODS)
BY_POS_METHODS = tuple(name for name, m in DISCOVERY_METHODS.items() if m.by_pos)  # scores at each token position
LEVELS = ("edges", "layers")


def _method_args(method: DiscoveryMethod, method_args: Mapping[str, Any] | None, **shorthands: Any) -> dict[str, Any]:
    """``method_args`` with the named shorthands (``steps=``, ``interpolate=``) folded in, checked
    against the method's parameters: a shorthand the method does not take is refused."""
    args = dict(method_args or {})
    for key, value in shorthands.items():
        if value is None:
            continue
        if key in args and args[key] != value:
            raise InputError(f"{key} given twice ({value!r} and method_args {args[key]!r}); give it once")
        args[key] = value
    return check_method_args(method, args)


def _check_selection(top_k, threshold, target: float, uses_target: bool) -> None:
    """What pruning would refuse after scoring, refused before it: ``top_k`` or ``threshold``
    (not both), or (neither, where the method does not prune by itself) a ``target`` in (0, 1]."""
    if top_k is not None and threshold is not None:
        raise InputError("give top_k or threshold, not both")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise InputError(f"top_k needs a non-negative integer k, got {top_k!r}")
    if threshold is not None and not math.isfinite(threshold):
        raise InputError(f"threshold must be a finite number, got {threshold!r}")
    if top_k is None and threshold is None and uses_target and not 0 < target <= 1:
        raise InputError(f"target faithfulness must be in (0, 1], got {target}")


def _check_edge_selection(model, method: str, record: DiscoveryMethod, name: str, args: Mapping[str, Any],
                          threshold, scores, by_pos: bool) -> None:
    """What an edge selection other than top-k refuses, before any work."""
    if record.prunes:
        raise InputError(f"{method} prunes by itself; selection {name!r} picks among scored edges: drop selection "
                         "or pick a scoring method")
    if threshold is not None:
        raise InputError(f"selection {name!r} takes a size: give top_k, or target for the smallest faithful circuit, "
                         "not threshold (which keeps every edge above a |score|: selection 'top-k')")
    if name == "bootstrap" and scores is not None:
        raise InputError("selection 'bootstrap' scores the edges on each resample of the prompts itself; drop scores")
    if name == "ilp":
        if by_pos:
            raise InputError("selection 'ilp' works on edge-level graphs; drop by_pos or use another selection")
        check_ilp_size(len(graph_edges(model)), args["max_edges"])


def score_edges(model, task, method: str, steps: int | None = None, ablation: str = DEFAULT_ABLATION,
                progress: bool = False, interpolate: str | None = None, by_pos: bool = False, *,
                method_args: Mapping[str, Any] | None = None, source: dict[str, Tensor] | None = None) -> Scores:
    """Edge scores from a registered method (`DISCOVERY_METHODS`, not ``acdc``, which prunes
    by itself); a score estimates m(edge ablated) - m(clean) (edge pruning: how needed the edge is).
    ``method_args``: the method's hyper-parameters (``DISCOVERY_METHODS[method].params``);
    ``steps`` and ``interpolate`` are shorthands for two of them. ``by_pos``: one score per edge
    and token position (``a0.h0@3->a1.h0@3<k>``). ``source``: the ablation source already
    computed for ``ablation`` (``ablation_source``)."""
    record = discovery_method(method)
    if record.prunes:
        raise InputError(f"{method} prunes by itself and gives no edge scores to prune; use discover(method={method!r})")
    if by_pos and not record.by_pos:
        raise InputError(f"by_pos scores edges at each position with {BY_POS_METHODS}, not {method!r}")
    args = _method_args(record, method_args, steps=steps, interpolate=interpolate)
    extra = {"by_pos": by_pos} if record.by_pos else {}
    return record.function(model, task, ablation=ablation, progress=progress, source=source, **extra, **args)


def discover(model, task, method: str = "eap-ig", *, top_k: int | None = None, threshold: float | None = None,
             target: float = 0.9, ablation: str = DEFAULT_ABLATION, steps: int | None = None, route_cap: bool = True,
             scores: Scores | None = None, progress: bool = False, interpolate: str | None = None,
             by_pos: bool = False, level: str = "edges", method_args: Mapping[str, Any] | None = None,
             selection: str = "top-k", selection_args: Mapping[str, Any] | None = None) -> Circuit:
    """Score the model's edges with ``method`` and prune: ``top_k`` edges, or every edge with
    |score| >= ``threshold``, or (neither given) the smallest top-|score| circuit reaching
    ``target`` faithfulness under ``ablation``. ``acdc`` prunes by itself (``threshold`` is its tau).
    Edges are scored with the same ablation they are evaluated with, from one ablation source
    computed once.

    ``method``: a registered method (`DISCOVERY_METHODS`);
    ``method_args``: its hyper-parameters (each method's ``params`` and defaults, e.g.
    ``{"steps": 500}`` for edge pruning); one it does not take raises ``ValueError``. ``steps``
    and ``interpolate`` are shorthands for those two.

    ``route_cap`` (default): rank by `cap_by_route` scores, each
    edge's |score| capped by the widest route from its receiver to the logits, so that edges into
    heads the output does not need rank by what they can pass on (the circuit's edge scores are
    then the capped ones, and each edge keeps the estimator's value as ``raw_score``, which
    `to_mib` exports by default). ``scores``: edge scores already
    computed by ``method`` with this ``ablation`` (from `score_edges`), to prune without
    scoring again.

    ``interpolate``: EAP-IG's integration path, the input embeddings (``"inputs"``, default), each
    layer's outputs in turn (``"activations"``) or every edge's mask at once (``"mask"``; see
    `circuitkit.attribution.eap_ig`).

    ``by_pos``: a position-resolved circuit, edges between (node, position) pairs
    (``a0.h0@3->a1.h0@3<k>``), scored, pruned and evaluated on the position-resolved graph (an
    edge outside the circuit is ablated at that position only; see
    `circuitkit.circuit.evaluation`). Methods `BY_POS_METHODS`.

    ``level="layers"``: a circuit of whole attention blocks and MLPs (nodes ``attn_out.L``,
    ``m{L}``; `circuitkit.circuit.layers`), for models whose heads do not separate (the edge
    graph refuses them by name) or a first coarse look; methods `LAYER_METHODS`, EAP-IG along
    the nodes' ablation masks. ``top_k`` / ``threshold`` / ``target`` then count nodes.

    ``selection``: how the scored edges are picked (`circuitkit.circuit.selection.SELECTIONS`):
    ``"top-k"`` (default: by |score|), ``"bootstrap"`` (edges whose score sign agrees over
    bootstrap resamples of the prompts, ranked by |mean score|; the method scores each resample,
    so ``scores`` cannot be given), ``"ratio"`` (a share of the budget to the most needed edges by
    signed score, the rest by |score|) or ``"ilp"`` (the connected edge set of largest summed
    |score|, exact, for graphs up to ``max_edges`` edges); ``selection_args`` their parameters
    (e.g. ``{"n_resamples": 20, "agreement": 0.8}``, ``{"ratio": 0.5}``). Each but ``top-k``
    takes ``top_k`` as its size or, without it, finds the smallest selected circuit reaching
    ``target``; none takes ``threshold``. Checked before any work.

    The circuit's ``meta`` records the evaluation (faithfulness, completeness), the method's
    hyper-parameters (``method_args``), the edge selection and its arguments (``selection``,
    ``selection_args``) and seconds taken.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> circuit = ck.discover(model, task, method="eap-ig", steps=3)
        >>> circuit.edges
        ['input->a0.h0<v>', 'input->a1.h0<q>', 'input->a1.h0<v>', 'a0.h0->a1.h0<k>', 'a1.h0->logits']
        >>> round(circuit.meta["faithfulness"], 2)
        1.0
    """
    if level not in LEVELS:
        raise InputError(f"unknown level {level!r}; choose one of {LEVELS}")
    chooser, chosen_args = check_selection_args(selection, selection_args)
    if chooser.name != "top-k" and level == "layers":
        raise InputError(f"selection {selection!r} picks edges; level='layers' keeps nodes by |score| (top-k), "
                         "drop selection or use level='edges'")
    if level == "layers":
        return _discover_layers(model, task, method, top_k=top_k, threshold=threshold, target=target,
                                ablation=ablation, steps=steps, scores=scores, progress=progress,
                                interpolate=interpolate, by_pos=by_pos, method_args=method_args)
    record = discovery_method(method)
    args = _method_args(record, method_args, steps=steps, interpolate=interpolate)
    if by_pos and not record.by_pos:
        raise InputError(f"by_pos discovers position-resolved circuits with {BY_POS_METHODS}, not {method!r}")
    _check_selection(top_k, threshold, target, uses_target=not record.prunes)
    if chooser.name != "top-k":
        _check_edge_selection(model, method, record, chooser.name, chosen_args, threshold, scores, by_pos)
    task.check_model(model)
    start = time.perf_counter()
    if record.prunes:
        if top_k is not None or scores is not None:
            raise InputError(f"{method} scores and prunes by itself; drop top_k / scores (or pick another method)")
        ev = EdgeEvaluator(model, task, ablation)
        circuit = record.function(model, task, 0.01 if threshold is None else threshold, ablation=ablation,
                                  progress=progress, source=ev.source, **args)
    else:
        ev = EdgeEvaluator(model, task, ablation, by_pos=by_pos)  # the one ablation source of this discovery
        resamples = None
        if chooser.name == "bootstrap":  # each resample scores its own prompts (and ablation source)
            resamples = bootstrap_scores(task, lambda t: score_edges(
                model, t, method, ablation=ablation, progress=progress, by_pos=by_pos, method_args=args),
                chosen_args["n_resamples"], chosen_args["seed"])
            scores = mean_scores(resamples)
        if scores is None:
            scores = score_edges(model, task, method, ablation=ablation, progress=progress, by_pos=by_pos,
                                 method_args=args, source=ev.source)
        elif not scores.is_edge:
            raise InputError("discover prunes edges: pass edge Scores (from score_edges), not node scores")
        elif scores_by_pos(scores) != by_pos:
            raise InputError(f"scores are {'' if scores_by_pos(scores) else 'not '}position-resolved; pass "
                             f"by_pos={scores_by_pos(scores)} with them")
        raw = scores
        if route_cap:
            scores = cap_by_route(scores)
        if chooser.name != "top-k":
            pick = selector(chooser.name, scores, ev.model_edges, resamples=resamples, sign=record.sign,
                            **dict(selection_args or {}))
            if top_k is not None:
                circuit = full_circuit(scores, model, ev.model_edges).with_members(pick(top_k), "edge")
            else:
                edges, n = smallest_selected(pick, ev, target)
                circuit = full_circuit(scores, model, ev.model_edges).with_members(edges, "edge", prune=False)
                circuit.meta.update(target=target, n_edges=n)
            if resamples is not None:
                agreement = sign_agreement(resamples)
                for label, share in agreement.items():
                    circuit.edge_data(label)["sign_agreement"] = share
                circuit.meta["n_consistent"] = len(sign_consistent(resamples, chosen_args["agreement"],
                                                                   chosen_args["confidence"]))
        elif top_k is not None:
            circuit = full_circuit(scores, model, ev.model_edges).top_k(top_k)
        elif threshold is not None:
            circuit = full_circuit(scores, model, ev.model_edges).threshold(threshold)
        else:
            circuit = smallest_faithful(model, task, scores, target=target, evaluator=ev)
    if not record.prunes and route_cap:
        for label, value in raw.as_dict().items():  # the estimator's own values, for exports (MIB)
            circuit.edge_data(label)["raw_score"] = float(value)
    circuit.meta.setdefault("d_model", int(model.cfg.d_model))
    circuit.meta.setdefault("example_prompt", example_prompt(model, task))  # for attribution-graph exports
    result = evaluate(model, task, circuit, evaluator=ev)
    circuit.meta.update(faithfulness=result.faithfulness, completeness=result.completeness, ablation=ablation,
                        seconds=time.perf_counter() - start, discovery=method,
                        route_cap=bool(route_cap and not record.prunes), by_pos=by_pos, method_args=args)
    if not record.prunes:  # ACDC selects by itself
        circuit.meta.update(selection=chooser.name, selection_args=chosen_args)
    if method == "eap-ig":
        circuit.meta["interpolate"] = scores.meta.get("interpolate", args["interpolate"])
    return circuit


def _discover_layers(model, task, method: str, *, top_k, threshold, target, ablation, steps, scores, progress,
                     interpolate, by_pos, method_args) -> Circuit:
    if method not in LAYER_METHODS:
        raise InputError(f"level='layers' scores whole attention blocks and MLPs with {LAYER_METHODS}, not "
                         f"{method!r}")
    args = dict(method_args or {})
    if steps is not None:
        args["steps"] = steps
    takes = ("steps",) if method == "eap-ig" else ()
    if set(args) - set(takes):
        raise InputError(f"level='layers' {method} takes {takes or 'no parameters'}, not {sorted(set(args) - set(takes))}")
    steps = args.get("steps", 10)
    if by_pos:
        raise InputError("level='layers' finds circuits of whole layers' outputs; drop by_pos")
    if interpolate not in (None, "mask"):
        raise InputError(f"level='layers' integrates EAP-IG along the nodes' ablation masks; drop interpolate "
                         f"({interpolate!r}) or pass 'mask'")
    _check_selection(top_k, threshold, target, uses_target=True)
    task.check_model(model)
    start = time.perf_counter()
    ev = LayerEvaluator(model, task, ablation)
    if scores is None:
        scores = score_layers(model, task, method, steps=steps, progress=progress, evaluator=ev)
    elif scores.is_edge or sorted(scores.labels) != sorted(ev.nodes):
        raise InputError("level='layers' prunes layer nodes: pass the Scores of score_layers for this model")
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
