"""Edge selection: which scored edges make a circuit of a given size.

Discovery scores every edge, then selects. ``top-k`` (the default) keeps the highest |score|
edges. The others follow the MIB shared-task entry of Nikankin et al. (arXiv 2510.25786), which
kept the scores of one estimator (EAP-IG) and changed only how edges are picked:

* ``bootstrap``: score the edges on ``n_resamples`` bootstrap resamples of the task's prompts
  (rows drawn with replacement, as many as the task has); an edge is *sign-consistent* when the
  sign of its mean score over the resamples is the sign of at least ``agreement`` of the
  resamples' scores (or, with ``confidence``, the paper's own test: the normal confidence interval
  ``mean ± z * std / sqrt(B)`` at that level excludes 0). The mean scores replace the scores;
  sign-consistent edges rank first by |mean|, then (``fill``, as the paper does) the others by
  |mean| when the budget is larger than the consistent set.
* ``ratio``: the paper's positive / negative ratio rule. Of a budget of ``n`` edges,
  ``int(ratio * n)`` go to the edges the behaviour needs most by *signed* score (the most
  negative circuitkit scores, m(ablated) - m(clean); the most positive for ``sign="mib"``), the
  remaining ``n - int(ratio * n)`` to the highest |score| edges not yet taken. ``ratio=1``
  is a signed top-k, ``ratio=0`` the plain |score| top-k.
* ``ilp``: an integer linear program (``scipy.optimize.milp``) choosing at most ``n`` edges that
  maximise their summed |score| (or signed importance with ``by_abs=False``) such that every
  chosen edge lies on an ``input -> logits`` path of chosen edges: its receiver reaches the
  logits and its sender is reached from the input. Binary ``x_e`` per edge and ``y_v`` per node,
  ``x_e <= y_u, y_v`` for the edge's ends, and every used node but the input (logits) has a
  chosen edge in (out). Exact, so only for small graphs: above ``max_edges`` edges it refuses.

Each function works on plain data (`Scores` in, edge ids out); `circuitkit.discover` runs them
through ``selection=`` / ``selection_args=``, with ``top_k=`` as the size or ``target=`` for the
smallest selected circuit reaching that faithfulness.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitkit import names
from circuitkit.circuit.evaluation import SIGNS, EdgeEvaluator, rank_edges, smallest_size
from circuitkit.errors import InputError, MissingDependencyError, RunError, UnknownNameError
from circuitkit.scores import Scores

__all__ = ["SELECTIONS", "Selection", "bootstrap_indices", "bootstrap_scores", "check_ilp_size",
           "check_selection_args", "ilp_edges", "mean_scores", "ratio_edges", "select_edges", "selector",
           "sign_agreement", "sign_consistent", "smallest_selected"]

DEFAULT_MAX_EDGES = 400  # ILP: edges of the largest graph solved exactly (each is a binary variable)


@dataclass(frozen=True)
class Selection:
    """One edge-selection rule: its name, a one-line summary and its parameters with defaults
    (a ``None`` default of ``ratio`` means the parameter must be given)."""

    name: str
    summary: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """``name: summary (param=default, ...)`` for help texts."""
        shown = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}: {self.summary}" + (f" ({shown})" if shown else "")


SELECTIONS: dict[str, Selection] = {s.name: s for s in (
    Selection("top-k", "the highest |score| edges"),
    Selection("bootstrap", "edges whose score sign agrees over bootstrap resamples of the prompts, by |mean score|",
              {"n_resamples": 10, "agreement": 0.9, "confidence": None, "seed": 0, "fill": True}),
    Selection("ratio", "a share `ratio` of the budget to the most needed edges by signed score, the rest by |score|",
              {"ratio": None, "sign": None}),
    Selection("ilp", "the connected edge set of largest summed |score| within the budget (exact, small graphs)",
              {"max_edges": DEFAULT_MAX_EDGES, "by_abs": True, "sign": None, "time_limit": 60.0}),
)}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n_resamples": (lambda v: _integer(v) and v >= 2, "a whole number >= 2"),
    "agreement": (lambda v: _number(v) and 0.5 < v <= 1, "a fraction in (0.5, 1]"),
    "confidence": (lambda v: v is None or (_number(v) and 0 < v < 1), "None or a level in (0, 1), e.g. 0.95"),
    "seed": (_integer, "a whole number"),
    "fill": (lambda v: isinstance(v, bool), "true or false"),
    "ratio": (lambda v: _number(v) and 0 <= v <= 1, "a fraction in [0, 1]"),
    "sign": (lambda v: v is None or v in SIGNS, f"None or one of {SIGNS}"),
    "max_edges": (lambda v: _integer(v) and v >= 1, "a whole number >= 1"),
    "by_abs": (lambda v: isinstance(v, bool), "true or false"),
    "time_limit": (lambda v: _number(v) and v > 0, "seconds > 0"),
}


def check_selection_args(selection: str, args: Mapping[str, Any] | None = None) -> tuple[Selection, dict[str, Any]]:
    """The registered selection and its arguments, checked, with defaults filled in. An unknown
    name raises `UnknownNameError`; an argument it does not take or a bad value, `InputError`.

    Examples:
        >>> from circuitkit.circuit.selection import check_selection_args
        >>> check_selection_args("bootstrap", {"n_resamples": 5})[1]["n_resamples"]
        5
    """
    if selection not in SELECTIONS:
        raise UnknownNameError(f"unknown edge selection {selection!r}; choose one of {tuple(SELECTIONS)}")
    record = SELECTIONS[selection]
    given = dict(args or {})
    unknown = sorted(set(given) - set(record.params))
    if unknown:
        takes = ", ".join(record.params) or "no arguments"
        raise InputError(f"edge selection {selection!r} takes no {unknown}; it takes {takes}")
    for key, value in given.items():
        ok, expected = _CHECKS[key]
        if not ok(value):
            raise InputError(f"edge selection {selection!r}: {key} must be {expected}, got {value!r}")
    if selection == "ratio" and given.get("ratio") is None:
        raise InputError("edge selection 'ratio' needs the share of the budget for signed edges: "
                         "selection_args={'ratio': 0.5} (CLI: --selection-arg ratio=0.5)")
    if selection == "bootstrap" and given.get("confidence") is not None and "agreement" in given:
        raise InputError("bootstrap keeps edges by sign agreement or, with confidence, by a confidence interval "
                         "around the mean; give agreement or confidence, not both")
    return record, {**record.params, **given}


# --- bootstrap ---------------------------------------------------------------------------------

def bootstrap_indices(n_prompts: int, n_resamples: int, seed: int = 0) -> list[list[int]]:
    """``n_resamples`` bootstrap resamples of ``range(n_prompts)``: each ``n_prompts`` rows drawn
    with replacement by a ``torch.Generator`` seeded ``seed`` (the same every call).

    Examples:
        >>> from circuitkit.circuit.selection import bootstrap_indices
        >>> [len(rows) for rows in bootstrap_indices(4, 3)]
        [4, 4, 4]
    """
    if n_prompts < 1:
        raise InputError("bootstrap resampling needs a task with at least one prompt")
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(n_prompts, (n_prompts,), generator=generator).tolist() for _ in range(n_resamples)]


def bootstrap_scores(task, score: Callable[[Any], Scores], n_resamples: int = 10, seed: int = 0) -> list[Scores]:
    """``score(task.subset(rows))`` for each resample of `bootstrap_indices` (a resample scores
    its own prompts, ablation source included)."""
    return [score(task.subset(rows)) for rows in bootstrap_indices(len(task), n_resamples, seed)]


def _stack(resamples: Sequence[Scores]) -> tuple[list[str], torch.Tensor]:
    if not resamples:
        raise InputError("bootstrap selection needs the scores of at least one resample")
    labels = list(resamples[0].labels)
    for s in resamples[1:]:
        if list(s.labels) != labels:
            raise InputError("the resamples' scores label different edges; score one graph every time")
    return labels, torch.stack([s.values.double() for s in resamples])


def mean_scores(resamples: Sequence[Scores]) -> Scores:
    """The resamples' mean score of each edge (meta ``n_resamples``)."""
    labels, values = _stack(resamples)
    first = resamples[0]
    return Scores(values.mean(0), labels, first.method, task=first.task, metric=first.metric,
                  meta={**first.meta, "n_resamples": len(resamples)})


def sign_agreement(resamples: Sequence[Scores]) -> dict[str, float]:
    """Each edge's share of resamples whose score has the sign of its mean score (0 for a mean
    of exactly 0).

    Examples:
        >>> from circuitkit import Scores
        >>> from circuitkit.circuit.selection import sign_agreement
        >>> runs = [Scores([-1.0, 0.5], ["a0.h0->logits", "input->logits"], "eap"),
        ...         Scores([-2.0, -0.1], ["a0.h0->logits", "input->logits"], "eap")]
        >>> sign_agreement(runs)
        {'a0.h0->logits': 1.0, 'input->logits': 0.5}
    """
    labels, values = _stack(resamples)
    sign = torch.sign(values.mean(0))
    share = (torch.sign(values) == sign).double().mean(0) * (sign != 0)
    return dict(zip(labels, share.tolist(), strict=True))


def sign_consistent(resamples: Sequence[Scores], agreement: float = 0.9, confidence: float | None = None) -> list[str]:
    """The sign-consistent edges, in label order: ``sign_agreement >= agreement`` or, with
    ``confidence``, the paper's test: the interval ``mean ± z * std / sqrt(B)`` (``std`` with
    ddof=1, ``z`` the two-sided normal quantile of ``confidence``) excludes 0."""
    if confidence is None:
        return [label for label, share in sign_agreement(resamples).items() if share >= agreement - 1e-12]
    labels, values = _stack(resamples)
    if len(resamples) < 2:
        raise InputError("a confidence interval needs at least 2 resamples")
    z = statistics.NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    mean, margin = values.mean(0), z * values.std(0, unbiased=True) / math.sqrt(len(resamples))
    keep = (mean - margin > 0) | (mean + margin < 0)
    return [label for label, k in zip(labels, keep.tolist(), strict=True) if k]


# --- the rules ---------------------------------------------------------------------------------

def ratio_edges(scores: Scores, n: int, ratio: float, *, model_edges: Sequence[str] | None = None,
                sign: str = "circuitkit") -> list[str]:
    """The ratio rule: the ``int(ratio * n)`` most needed edges by signed score (``sign`` as in
    `circuitkit.faithfulness_curve`), then the highest-|score| edges not yet taken up to ``n``.

    Examples:
        >>> from circuitkit import Scores
        >>> from circuitkit.circuit.selection import ratio_edges
        >>> s = Scores([0.9, -0.3, -0.2, 0.1], ["input->logits", "a0.h0->logits", "input->a0.h0<v>",
        ...            "input->a0.h0<q>"], "eap")
        >>> ratio_edges(s, 2, 0.5)
        ['a0.h0->logits', 'input->logits']
    """
    edges = list(model_edges) if model_edges is not None else list(scores.labels)
    n = max(0, min(int(n), len(edges)))
    signed = rank_edges(scores, edges, by_abs=False, sign=sign)
    chosen = signed[:int(ratio * n)]
    taken = set(chosen)
    chosen += [e for e in rank_edges(scores, edges, by_abs=True) if e not in taken][:n - len(chosen)]
    return chosen


def check_ilp_size(n_edges: int, max_edges: int = DEFAULT_MAX_EDGES) -> None:
    """Refuse an ILP over more than ``max_edges`` edges, naming the limit and the ways out."""
    if n_edges > max_edges:
        raise InputError(f"edge selection 'ilp' solves an integer program with one binary variable per edge; this "
                         f"graph has {n_edges} edges, over its limit max_edges={max_edges}. Use a smaller model, "
                         f"raise the limit (selection_args={{'max_edges': {n_edges}}}, CLI --selection-arg "
                         f"max_edges={n_edges}; the solve may then take long), or select with 'top-k' / 'bootstrap'")


def ilp_edges(scores: Scores, n: int, *, model_edges: Sequence[str] | None = None, by_abs: bool = True,
              sign: str = "circuitkit", max_edges: int = DEFAULT_MAX_EDGES, time_limit: float = 60.0) -> list[str]:
    """At most ``n`` edges maximising their summed |score| (``by_abs=False``: signed importance,
    the needed edges' side of ``sign`` positive) such that each lies on an ``input -> logits``
    path of chosen edges; unscored edges weigh 0. Edge ids in ``model_edges`` order. Refuses
    graphs above ``max_edges`` edges (`check_ilp_size`) and position-resolved ones.

    Examples:
        >>> from circuitkit import Scores
        >>> from circuitkit.circuit.selection import ilp_edges
        >>> s = Scores([0.1, 0.9, 0.8, 0.5], ["input->logits", "input->a0.h0<v>", "input->a0.h0<q>",
        ...            "a0.h0->logits"], "eap")
        >>> ilp_edges(s, 2)  # the two largest edges reach no logits without a0.h0->logits
        ['input->a0.h0<v>', 'a0.h0->logits']
    """
    edges = list(model_edges) if model_edges is not None else list(scores.labels)
    check_ilp_size(len(edges), max_edges)
    n = max(0, min(int(n), len(edges)))
    if n == 0:
        return []
    try:
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import coo_matrix
    except ImportError:
        raise MissingDependencyError("edge selection 'ilp' needs scipy: python -m pip install scipy") from None
    parsed = [names.parse_edge(e) for e in edges]
    nodes = sorted({p for e in parsed for p in (e.parent, e.child)})
    if any(names.parse_node(v).pos is not None for v in nodes):
        raise InputError("edge selection 'ilp' works on edge-level graphs, not position-resolved ones; drop by_pos "
                         "or select with 'top-k' / 'bootstrap' / 'ratio'")
    index = {v: len(edges) + i for i, v in enumerate(nodes)}
    values = scores.as_dict()
    factor = -1.0 if sign == "circuitkit" else 1.0
    weight = [0.0 if values.get(e) is None else (abs(values[e]) if by_abs else factor * values[e]) for e in edges]
    rows, cols, data, upper = [], [], [], []

    def add(row: list[tuple[int, float]], ub: float) -> None:
        r = len(upper)
        for col, value in row:
            rows.append(r)
            cols.append(col)
            data.append(value)
        upper.append(ub)

    add([(i, 1.0) for i in range(len(edges))], n)  # the budget
    into: dict[str, list[int]] = {v: [] for v in nodes}
    out_of: dict[str, list[int]] = {v: [] for v in nodes}
    for i, e in enumerate(parsed):
        add([(i, 1.0), (index[e.parent], -1.0)], 0.0)  # an edge uses its sender ...
        add([(i, 1.0), (index[e.child], -1.0)], 0.0)  # ... and its receiver
        into[e.child].append(i)
        out_of[e.parent].append(i)
    for v in nodes:
        kind = names.parse_node(v).kind
        if kind != "input":  # a used node is fed by a chosen edge
            add([(index[v], 1.0), *((i, -1.0) for i in into[v])], 0.0)
        if kind != "logits":  # and feeds one
            add([(index[v], 1.0), *((i, -1.0) for i in out_of[v])], 0.0)
    size = len(edges) + len(nodes)
    matrix = coo_matrix((data, (rows, cols)), shape=(len(upper), size)).tocsr()
    result = milp(c=[-w for w in weight] + [0.0] * len(nodes), integrality=[1] * size, bounds=Bounds(0, 1),
                  constraints=LinearConstraint(matrix, -math.inf, upper), options={"time_limit": float(time_limit)})
    if result.x is None:
        raise RunError(f"edge selection 'ilp' found no solution within time_limit={time_limit}s ({result.message}); "
                       "raise time_limit or select with 'top-k' / 'bootstrap'")
    return [e for e, x in zip(edges, result.x[:len(edges)], strict=True) if x > 0.5]


def selector(selection: str, scores: Scores, model_edges: Sequence[str] | None = None, *,
             resamples: Sequence[Scores] | None = None, sign: str = "circuitkit",
             **args: Any) -> Callable[[int], list[str]]:
    """``n -> the selected edges`` for one registered selection over ``scores`` (for
    ``bootstrap``: the resamples' mean scores, with ``resamples`` the per-resample scores);
    ``args`` the selection's (checked by `check_selection_args`). A ``sign`` among ``args``
    (when not None) overrides the ``sign`` keyword."""
    record, args = check_selection_args(selection, args)
    edges = list(model_edges) if model_edges is not None else list(scores.labels)
    sign = args.get("sign") or sign
    if record.name == "top-k":
        order = rank_edges(scores, edges, by_abs=True)
        return lambda n: order[:max(0, n)]
    if record.name == "bootstrap":
        if resamples is None:
            raise InputError("bootstrap selection needs the per-resample scores (resamples=...), e.g. from "
                             "bootstrap_scores")
        kept = set(sign_consistent(resamples, args["agreement"], args["confidence"]))
        ranked = rank_edges(scores, edges, by_abs=True)
        order = [e for e in ranked if e in kept] + ([e for e in ranked if e not in kept] if args["fill"] else [])
        return lambda n: order[:max(0, n)]
    if record.name == "ratio":
        return lambda n: ratio_edges(scores, n, args["ratio"], model_edges=edges, sign=sign)
    check_ilp_size(len(edges), args["max_edges"])
    cache: dict[int, list[str]] = {}

    def ilp(n: int) -> list[str]:
        if n not in cache:
            cache[n] = ilp_edges(scores, n, model_edges=edges, by_abs=args["by_abs"], sign=sign,
                                 max_edges=args["max_edges"], time_limit=args["time_limit"])
        return cache[n]
    return ilp


def select_edges(scores: Scores, n: int, selection: str = "top-k", *, model_edges: Sequence[str] | None = None,
                 resamples: Sequence[Scores] | None = None, sign: str = "circuitkit", **args: Any) -> list[str]:
    """At most ``n`` edges chosen from ``scores`` by a registered selection (`SELECTIONS`:
    ``top-k``, ``bootstrap``, ``ratio``, ``ilp``; see `circuitkit.circuit.selection`), with that
    selection's arguments as keywords. ``model_edges``: the graph's edges (default the scored
    ones); ``resamples``: the per-resample scores ``bootstrap`` needs (``scores`` then being their
    `mean_scores`); ``sign``: what the scores hold, as in `faithfulness_curve`.

    Examples:
        >>> import circuitkit as ck
        >>> s = ck.Scores([0.9, -0.3, -0.2, 0.1], ["input->logits", "a0.h0->logits", "input->a0.h0<v>",
        ...               "input->a0.h0<q>"], "eap")
        >>> ck.select_edges(s, 2)
        ['input->logits', 'a0.h0->logits']
        >>> ck.select_edges(s, 2, "ratio", ratio=1.0)
        ['a0.h0->logits', 'input->a0.h0<v>']
        >>> ck.select_edges(s, 2, "ilp")  # a0.h0->logits alone reaches no input: not worth an edge
        ['input->logits']
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"select_edges needs a non-negative whole number of edges n, got {n!r}")
    return selector(selection, scores, model_edges, resamples=resamples, sign=sign, **args)(n)


def smallest_selected(pick: Callable[[int], list[str]], evaluator: EdgeEvaluator, target: float = 0.9,
                      search: str = "binary") -> tuple[list[str], int]:
    """The edges ``pick(n)`` for the smallest size ``n`` (searched as `smallest_faithful` does,
    `smallest_size`) whose circuit reaches ``target`` faithfulness; the full graph counts as
    reaching it. Returns ``(edges, n)``."""
    total = len(evaluator.model_edges)

    def edges(n: int) -> list[str]:
        return list(evaluator.model_edges) if n >= total else pick(n)

    n = smallest_size(lambda n: n >= total or evaluator.faithfulness(edges(n)) >= target, total, search)
    return edges(n), n
