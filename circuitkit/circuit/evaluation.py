"""Faithfulness and completeness of circuits by edge ablation, and the MIB faithfulness curve.

Every edge outside the circuit reads its parent's activation from an ablation source (mean over
clean prompts, a resampled prompt, or the corrupted prompt) via
`circuitkit.ablation.edges.run_with_edges`; a node-level circuit keeps every model edge
among its nodes (plus ``input`` and ``logits``).

``f(C) = (m(C) - m(∅)) / (m(full) - m(∅))``: 1 = the circuit alone reproduces the model.

Position-resolved circuits (edges ``a0.h0@3->a1.h0@3<k>``, nodes ``a1.h0@9``) are evaluated the
same way on the position-resolved graph: every (edge, position) outside the circuit is ablated at
that position (`run_with_mask` with a per-position mask). A
circuit that keeps an edge at every position is the edge-level circuit keeping it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch

from circuitkit import names
from circuitkit.ablation.edges import ablation_source, graph_edges, run_with_edges
from circuitkit.ablation.kinds import DEFAULT_ABLATION, check_kind
from circuitkit.circuit.core import Circuit
from circuitkit.circuit.layers import LayerEvaluator, is_layer_node
from circuitkit.errors import InputError
from circuitkit.scores import Scores
from circuitkit.tasks.metrics import check_ablation_changes_metric, normalized

MIB_KS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)  # % of edges


@dataclass
class CircuitEvaluation:
    """How well a circuit reproduces (faithfulness) and accounts for (completeness) a behaviour.

    ``completeness = 1 - f(complement)``: 1 when ablating the circuit alone (keeping every other
    edge) removes the whole behaviour.
    """

    faithfulness: float
    completeness: float
    metric_circuit: float
    metric_complement: float
    metric_full: float
    metric_empty: float
    n_edges: int
    n_model_edges: int
    ablation: str
    task: str

    def to_dict(self) -> dict:
        return asdict(self)


class EdgeEvaluator:
    """Caches the ablation source and the full / empty metrics of one (model, task, ablation)."""

    def __init__(self, model, task, ablation: str = DEFAULT_ABLATION, seed: int = 0, by_pos: bool = False) -> None:
        check_kind(ablation)
        task.check_model(model)
        self.model, self.task, self.ablation, self.by_pos = model, task, ablation, by_pos
        # by_pos: the position-resolved graph, every edge at every position of the task's prompts
        self.model_edges: list[str] = (names.edges_at(graph_edges(model), task.clean.shape[1]) if by_pos
                                       else graph_edges(model))
        self._edge_set = set(self.model_edges)
        self.source = ablation_source(model, task, kind=ablation, seed=seed)
        self._cache: dict[frozenset[str], float] = {}
        with torch.no_grad():
            self.metric_full = float(task.score(model(task.clean)))
        self.metric_empty = self.metric([])
        check_ablation_changes_metric(self.metric_full, self.metric_empty, ablation, task.name)

    def check_edges(self, edges: Iterable[str]) -> list[str]:
        edges = list(edges)
        unknown = [e for e in edges if e not in self._edge_set]
        if unknown:
            form = ("position-resolved ids 'parent@p->child@p' for positions of the task's prompts (by_pos=True)"
                    if self.by_pos else "names.all_edges ids (positions need by_pos=True)")
            raise InputError(f"edges not in this model's graph: {unknown[:5]}; circuits must use {form} for this "
                             "model (no features or layers it lacks)")
        return edges

    def metric(self, keep_edges: Iterable[str]) -> float:
        """The task metric with every edge outside ``keep_edges`` ablated."""
        keep = frozenset(self.check_edges(keep_edges))
        if keep not in self._cache:
            with torch.no_grad():
                logits = run_with_edges(self.model, self.task.clean, keep_edges=keep, source=self.source)
            self._cache[keep] = float(self.task.score(logits))
        return self._cache[keep]

    def normalized(self, value: float) -> float:
        """``value`` between the empty circuit (0) and the full model (1)."""
        return float(normalized(value, self.metric_full, self.metric_empty))

    def faithfulness(self, keep_edges: Iterable[str]) -> float:
        return self.normalized(self.metric(keep_edges))

    def faithfulness_without(self, ablate_edges: Iterable[str]) -> float:
        """Faithfulness of the model with only ``ablate_edges`` ablated (every other edge kept)."""
        gone = set(self.check_edges(ablate_edges))
        return self.faithfulness([e for e in self.model_edges if e not in gone])


def is_position_resolved(circuit: Circuit) -> bool:
    """Whether the circuit's components carry token positions (``a0.h0@3->a1.h0@3<k>``, ``a1.h0@9``)."""
    return any(names.parse_node(n).pos is not None for n in circuit.graph)


def circuit_edges(circuit: Circuit, model_edges: Sequence[str]) -> list[str]:
    """The model edges a circuit keeps: its in-graph edges, or for a node-level circuit every
    model edge whose endpoints are circuit nodes (``input`` / ``logits`` always count, at every
    position of a position-resolved graph)."""
    if circuit.level == "edge":
        return circuit.edges
    return _edges_among(set(circuit.nodes), model_edges, inside=True)


def _edges_among(nodes: set[str], model_edges: Sequence[str], inside: bool) -> list[str]:
    """Model edges whose two endpoints are each in ``nodes`` (``inside``) or each outside it, with
    ``input`` and ``logits`` (at any position) on both sides."""
    unknown = [n for n in nodes if names.parse_node(n).kind in ("feature", "error", "site")]
    if unknown:
        raise InputError(f"node circuits are evaluated on heads / MLPs; {unknown[:3]} are SAE features or sites")

    def kept(node: str) -> bool:
        return names.parse_node(node).kind in ("input", "logits") or (node in nodes) == inside

    out = []
    for e in model_edges:
        edge = names.parse_edge(e)
        if kept(edge.parent) and kept(edge.child):
            out.append(e)
    return out


def is_layer_circuit(circuit: Circuit) -> bool:
    """Whether the circuit is on the layer graph (nodes ``attn_out.L`` / ``m{L}``,
    `circuitkit.circuit.layers`)."""
    return circuit.level == "node" and any(is_layer_node(n) for n in circuit.graph)


def evaluate(model, task, circuit: Circuit, ablation: str = DEFAULT_ABLATION, seed: int = 0,
             evaluator: EdgeEvaluator | LayerEvaluator | None = None) -> CircuitEvaluation:
    """Faithfulness and completeness of ``circuit`` on ``task`` (see `CircuitEvaluation`);
    a position-resolved circuit on the position-resolved graph, a layer-level circuit
    (`circuitkit.circuit.layers`) by ablating whole attention blocks and MLPs
    (``n_edges`` then counts nodes).

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> result = ck.evaluate(model, task, ck.reference_circuit("induction-handbuilt"))
        >>> round(result.faithfulness, 2), round(result.completeness, 2), result.n_edges
        (1.0, 1.0, 7)
    """
    if isinstance(evaluator, LayerEvaluator) or (evaluator is None and is_layer_circuit(circuit)):
        return _evaluate_layers(task, circuit, evaluator or LayerEvaluator(model, task, ablation, seed))
    ev = evaluator or EdgeEvaluator(model, task, ablation, seed, by_pos=is_position_resolved(circuit))
    keep = ev.check_edges(circuit_edges(circuit, ev.model_edges))
    keep_set = set(keep)
    complement = [e for e in ev.model_edges if e not in keep_set]
    if circuit.level == "node":  # the complement of a node circuit: every edge among the other nodes
        complement = _edges_among(set(circuit.nodes), ev.model_edges, inside=False)
    m_circuit, m_complement = ev.metric(keep), ev.metric(complement)
    return CircuitEvaluation(
        faithfulness=ev.normalized(m_circuit), completeness=1.0 - ev.normalized(m_complement),
        metric_circuit=m_circuit, metric_complement=m_complement, metric_full=ev.metric_full,
        metric_empty=ev.metric_empty, n_edges=len(keep), n_model_edges=len(ev.model_edges), ablation=ev.ablation,
        task=task.name)


def _evaluate_layers(task, circuit: Circuit, ev: LayerEvaluator) -> CircuitEvaluation:
    keep = ev.check_nodes(circuit.nodes)
    m_circuit, m_complement = ev.metric(keep), ev.metric(n for n in ev.nodes if n not in set(keep))
    return CircuitEvaluation(
        faithfulness=ev.normalized(m_circuit), completeness=1.0 - ev.normalized(m_complement),
        metric_circuit=m_circuit, metric_complement=m_complement, metric_full=ev.metric_full,
        metric_empty=ev.metric_empty, n_edges=len(keep), n_model_edges=len(ev.nodes), ablation=ev.ablation,
        task=task.name)


def faithfulness(model, task, circuit: Circuit, ablation: str = DEFAULT_ABLATION, seed: int = 0) -> float:
    """``(m(circuit) - m(∅)) / (m(full) - m(∅))`` with every edge outside the circuit ablated.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> reference = ck.reference_circuit("induction-handbuilt")
        >>> round(ck.faithfulness(model, task, reference), 2)
        1.0
    """
    if is_layer_circuit(circuit):
        return evaluate(model, task, circuit, ablation, seed).faithfulness
    ev = EdgeEvaluator(model, task, ablation, seed, by_pos=is_position_resolved(circuit))
    return ev.faithfulness(circuit_edges(circuit, ev.model_edges))


def completeness(model, task, circuit: Circuit, ablation: str = DEFAULT_ABLATION, seed: int = 0) -> float:
    """``1 - f(complement)``: ablate the circuit, keep everything else.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> reference = ck.reference_circuit("induction-handbuilt")
        >>> round(ck.completeness(model, task, reference), 2)
        1.0
    """
    return evaluate(model, task, circuit, ablation, seed).completeness


SIGNS = ("circuitkit", "mib")


def _check_sign(sign: str) -> None:
    if sign not in SIGNS:
        raise InputError(f"sign must be 'circuitkit' (scores estimate m(ablated) - m(clean): needed edges negative) "
                         f"or 'mib' (loss attributions: needed edges positive), got {sign!r}")


def rank_edges(scores: Scores, model_edges: Sequence[str], by_abs: bool, sign: str = "circuitkit") -> list[str]:
    """Model edges best first (unscored edges last), ties broken by id for determinism.

    ``by_abs=False`` ranks by signed importance, the edges the behaviour needs first: the most
    negative scores for ``sign="circuitkit"`` (a score estimates m(edge ablated) - m(clean)), the
    most positive for ``sign="mib"`` (MIB attributes the loss, -metric)."""
    _check_sign(sign)
    values = scores.as_dict()
    known = set(model_edges)
    unknown = [label for label in values if label not in known]
    if unknown:
        raise InputError(f"scores for edges this model lacks: {unknown[:5]}; score this model's graph "
                         "(circuitkit.ablation.edges.graph_edges)")
    factor = -1.0 if sign == "circuitkit" else 1.0
    def key(edge: str):
        v = values.get(edge)
        return (v is None, -(abs(v) if by_abs else factor * v) if v is not None else 0.0, edge)
    return sorted(model_edges, key=key)


def scores_by_pos(scores: Scores) -> bool:
    """Whether edge scores are position-resolved (labels ``a0.h0@3->a1.h0@3<k>``)."""
    return any("@" in label for label in scores.labels[:1])


def _check_edge_scores(scores: Scores) -> None:
    if not scores.is_edge:
        raise InputError("the faithfulness curve ranks edges: pass edge Scores (e.g. from EAP-IG); for node scores "
                         "build circuits with Circuit.from_scores(scores).top_k(k) and call faithfulness()")


def mib_size(k: float, n_total: int) -> int:
    """MIB's circuit size at ``k`` % of ``n_total`` edges: ``int(k / 100 * n_total)`` (rounded down)."""
    return min(n_total, math.floor(k * n_total / 100 + 1e-9))


def mib_prune(edges: Iterable[str]) -> list[str]:
    """The edges MIB evaluates of an edge set: EAP-IG's ``Graph.prune`` drops nodes lacking an
    in-graph input (the input node excepted) or output edge until nothing changes, which on a DAG
    keeps the edges on ``input -> logits`` paths (`Circuit.prune_dangling`)."""
    edges = list(edges)
    if not edges:
        return []
    return Circuit.from_nodes_edges(edges=edges).prune_dangling().edges


def curve_areas(ks: Sequence[float], faithfulness: Sequence[float]) -> tuple[float, float]:
    """``(area under f, area under |1 - f|)`` by trapezoids over ``k / 100``: MIB's ``area_under``
    (CPR, from the signed curve) and ``area_from_1`` (CMD, from the absolute one).
    MIB's grid runs from 0.1 % to 100 %, so the widest possible area is 0.999."""
    x = [k / 100 for k in ks]
    f = [float(v) for v in faithfulness]
    under = sum((x[i + 1] - x[i]) * (f[i] + f[i + 1]) / 2 for i in range(len(x) - 1))
    from_1 = sum((x[i + 1] - x[i]) * (abs(1 - f[i]) + abs(1 - f[i + 1])) / 2 for i in range(len(x) - 1))
    return float(under), float(from_1)


def faithfulness_curve(model, task, scores: Scores, ks: Sequence[float] = MIB_KS, ablation: str = DEFAULT_ABLATION,
                       seed: int = 0, evaluator: EdgeEvaluator | None = None, sign: str = "circuitkit",
                       prune: bool = True):
    """The MIB circuit-localisation curve: for each k (% of the model's edges) keep the top
    ``int(k / 100 * n_edges)`` edges, drop those on no ``input -> logits`` path (``prune``, as MIB's
    ``apply_topn(..., prune=True)`` does) and ablate the rest.

    ``sign`` says what ``scores`` hold: ``"circuitkit"`` (every circuitkit estimator: m(edge
    ablated) - m(clean), the edges a behaviour needs are negative) or ``"mib"`` (MIB / EAP-IG
    loss attributions: they are positive). The signed curve keeps the most needed edges first
    either way, so the same edges give the same curve under both conventions.

    Returns a DataFrame with columns ``k`` (%), ``n_edges`` (MIB's size), ``n_signed`` /
    ``n_abs`` (edges left after pruning), ``f_signed`` (top-k by signed importance, for CPR) and
    ``f_abs`` (top-k by |score|, for CMD); ``frame.attrs`` holds ``cpr`` (area under f_signed,
    higher is better) and ``cmd`` (area under |1 - f_abs|, lower is better), see `curve_areas`.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> scores = ck.eap_ig(model, task, steps=3, progress=False)
        >>> curve = ck.faithfulness_curve(model, task, scores, ks=(5, 10, 50))
        >>> curve[["k", "n_edges", "f_signed"]].round(2)
              k  n_edges  f_signed
        0   5.0        4       0.0
        1  10.0        8       1.0
        2  50.0       40       1.0
    """
    import pandas as pd

    _check_edge_scores(scores)
    _check_sign(sign)
    ks = sorted(float(k) for k in ks)
    if not ks or ks[0] <= 0 or ks[-1] > 100:
        raise InputError(f"ks are percentages of edges in (0, 100], got {ks}")
    ev = evaluator or EdgeEvaluator(model, task, ablation, seed, by_pos=scores_by_pos(scores))
    signed = rank_edges(scores, ev.model_edges, False, sign)
    absolute = rank_edges(scores, ev.model_edges, True)
    n_total = len(ev.model_edges)
    keep = mib_prune if prune else list
    rows = []
    for k in ks:
        n = mib_size(k, n_total)
        top_signed, top_abs = keep(signed[:n]), keep(absolute[:n])
        rows.append({"k": k, "n_edges": n, "n_signed": len(top_signed), "n_abs": len(top_abs),
                     "f_signed": ev.faithfulness(top_signed), "f_abs": ev.faithfulness(top_abs)})
    frame = pd.DataFrame(rows)
    cpr, _ = curve_areas(ks, frame["f_signed"])
    _, cmd = curve_areas(ks, frame["f_abs"])
    frame.attrs.update(cpr=cpr, cmd=cmd, sign=sign, pruned=prune, ablation=ev.ablation, method=scores.method,
                       task=task.name)
    return frame


def full_circuit(scores: Scores, model, model_edges: Sequence[str]) -> Circuit:
    """A circuit holding every model edge: scored edges with their score, the rest with None."""
    circuit = Circuit.from_scores(scores, **Circuit.for_model(model))
    missing = [e for e in model_edges if e not in set(scores.labels)]
    circuit.add_edges(((e, None) for e in missing), scores.method, scores.task, False)
    circuit.meta["d_model"] = int(model.cfg.d_model)  # EAP-IG / MIB files need it
    return circuit


def smallest_size(reached: Callable[[int], bool], total: int, search: str = "binary") -> int:
    """The size ``smallest_faithful`` picks: the first ``n`` in ``0..total`` with ``reached(n)``
    (``reached(total)`` must hold). ``"binary"``: the MIB grid of sizes, then a binary search
    between the last grid size not reaching it and the first one that does (a crossing point,
    the smallest n when ``reached`` is monotone); ``"linear"``: every n from 0 up."""
    if search == "linear":
        return next(n for n in range(total + 1) if reached(n))
    grid = sorted({0, *(min(total, math.ceil(k / 100 * total - 1e-9)) for k in MIB_KS), total})
    hi = next(size for size in grid if reached(size))  # f(all edges) = 1 >= target
    lo = max((size for size in grid if size < hi), default=-1)  # f(lo) < target (or lo = -1)
    while hi - lo > 1:  # invariant: not reached(lo), reached(hi)
        mid = (lo + hi) // 2
        if reached(mid):
            hi = mid
        else:
            lo = mid
    return hi


def smallest_faithful(model, task, scores: Scores, target: float = 0.9, ablation: str = DEFAULT_ABLATION,
                      seed: int = 0, search: str = "binary", evaluator: EdgeEvaluator | None = None) -> Circuit:
    """The fewest top-|score| edges whose circuit reaches ``target`` faithfulness.

    ``search="binary"``: evaluate the MIB grid of sizes (0.1 % ... 100 % of edges), then binary
    search between the last grid size below target and the first one reaching it; this returns a
    crossing point (f(n) >= target > f(n - 1)), the smallest n when f grows with n.
    ``"linear"`` tries every n from 0 up: the slow, exact minimum. The circuit's ``meta`` records
    ``faithfulness``, ``target``, ``ablation`` and ``n_edges``.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> scores = ck.eap_ig(model, task, steps=3, progress=False)
        >>> circuit = ck.smallest_faithful(model, task, scores, target=0.9)
        >>> circuit.meta["n_edges"], round(circuit.meta["faithfulness"], 2)
        (5, 1.0)
    """
    _check_edge_scores(scores)
    if not 0 < target <= 1:
        raise InputError(f"target faithfulness must be in (0, 1], got {target}")
    if search not in ("binary", "linear"):
        raise InputError(f"search must be 'binary' or 'linear', got {search!r}")
    ev = evaluator or EdgeEvaluator(model, task, ablation, seed, by_pos=scores_by_pos(scores))
    order = rank_edges(scores, ev.model_edges, True)
    total = len(order)
    n = smallest_size(lambda n: ev.faithfulness(order[:n]) >= target, total, search)
    circuit = full_circuit(scores, model, ev.model_edges).with_members(order[:n], "edge", prune=False)
    circuit.meta.update(faithfulness=ev.faithfulness(order[:n]), target=target, ablation=ev.ablation,
                        n_edges=n, selection="smallest_faithful")
    return circuit
