"""Feature-level attribution graphs (Marks et al. 2024, "Sparse Feature Circuits").

Nodes: the features of every spliced SAE / transcoder at each (site, position), one error node per
site and position, the input (the residual stream before block 0) per position, and the metric
(``logits``). ``positions="sum"`` aggregates each node over positions (ids without ``@pos``).

Estimates are first-order (attribution patching), with ``Δ = baseline - clean`` per node
(``baseline``: ``"mean"`` over the clean prompts at each position, ``"corrupted"``, or ``"zero"``):

* node ``u``: ``IE(u) = Σ_prompts ∇_u m · Δu`` with the total gradient of the metric ``m``;
* edge ``u -> d`` (``d`` downstream of ``u``): ``Σ_prompts ∇_d m · (∂d/∂u) · Δu``, where
  ``∂d/∂u`` is the direct derivative: gradients stop at every other site (each site's values are
  cut into leaves), so an edge is the part of ``u``'s effect that reaches ``d`` without passing
  through another node; ``u -> logits`` is ``∂m/∂u · Δu`` along paths through no other node.

`exact_node_effects` and `exact_edge_effects` are the slow exact counterparts (patch
``u`` to its baseline; for an edge, hold every site between ``u`` and ``d`` at its clean values and
move only ``d``), for checking the estimates on a sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit import names
from circuitkit.ablation.kinds import FEATURE_ABLATION_KINDS, check_kind
from circuitkit.errors import InputError
from circuitkit.sae.splice import INPUT_HOOK, Site, SpliceRecord, make_sites, splice_run
from circuitkit.scores import Scores
from circuitkit.tokenizers import check_token_ids

BASELINES = FEATURE_ABLATION_KINDS
POSITIONS = ("each", "sum")


@dataclass
class Baseline:
    """The value each node takes when ablated: input ``[batch, pos, d_model]``, per site acts
    ``[batch, pos, d_sae]`` and errors ``[batch, pos, width]``."""

    kind: str
    input: Tensor
    acts: dict[int, Tensor]
    errors: dict[int, Tensor]


def resolve_baseline(model, sites: Sequence[Site], task, baseline: str | Baseline) -> Baseline:
    """``baseline`` itself when it is already computed (a `Baseline` of ``task``'s prompts and
    these sites, built once and shared by discovery and evaluation), else `baseline_values`."""
    if not isinstance(baseline, Baseline):
        return baseline_values(model, sites, task, baseline)
    expected = tuple(task.clean.shape)
    if tuple(baseline.input.shape[:2]) != expected or set(baseline.acts) != set(range(len(sites))):
        raise InputError(f"the {baseline.kind} baseline was computed for prompts {list(baseline.input.shape[:2])} and "
                         f"{len(baseline.acts)} sites, not this task's {list(expected)} and {len(sites)} sites; build "
                         "it with baseline_values(model, sites, task, kind) for this task")
    return baseline


@torch.no_grad()
def baseline_values(model, sites: Sequence[Site], task, kind: str = "mean") -> Baseline:
    """Each node's ablated value: the mean over clean prompts at each position, the corrupted
    run's value, or zero."""
    check_kind(kind, BASELINES, "feature baseline")
    clean = check_token_ids(model, task.clean)
    tokens = check_token_ids(model, task.corrupted) if kind == "corrupted" else clean
    rec_input: dict[str, Tensor] = {}

    def grab(x, hook):
        rec_input["x"] = x.clone()

    # The input hook goes first, so it sees the residual stream before any site at resid_pre.0.
    with model.hooks(fwd_hooks=[(INPUT_HOOK, grab)]), splice_run(model, sites) as rec:
        model(tokens, return_type=None)
    x0 = rec_input["x"]
    acts, errors = dict(rec.acts), dict(rec.errors)
    if kind == "mean":
        x0 = x0.mean(0, keepdim=True).expand_as(x0)
        acts = {i: a.mean(0, keepdim=True).expand_as(a) for i, a in acts.items()}
        errors = {i: e.mean(0, keepdim=True).expand_as(e) for i, e in errors.items()}
    elif kind == "zero":
        x0 = torch.zeros_like(x0)
        acts = {i: torch.zeros_like(a) for i, a in acts.items()}
        errors = {i: torch.zeros_like(e) for i, e in errors.items()}
    return Baseline(kind, x0.detach(), {i: a.detach() for i, a in acts.items()},
                    {i: e.detach() for i, e in errors.items()})


@dataclass
class FeatureGraph:
    """Node and edge estimates of a feature graph, plus what is needed to evaluate it.

    ``nodes`` / ``edges``: `Scores` (method ``"feature-attribution"``), node ids
    ``f{L}.{site}.{i}@{pos}``, ``e{L}.{site}@{pos}``, ``input@{pos}``; edges ``parent->child``
    (child ``logits`` for the metric). ``candidates``: the nodes edges were computed among.
    """

    nodes: Scores
    edges: Scores
    sites: list[Site]
    positions: str
    baseline: str
    candidates: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def _pos_ids(positions: str, n_pos: int) -> list[int | None]:
    return [None] if positions == "sum" else list(range(n_pos))


def reduce_prompts(t: Tensor, positions: str) -> Tensor:
    """``[batch, pos, ...]`` -> ``[pos, ...]`` summed over prompts (and positions for "sum": ``[1, ...]``)."""
    t = t.sum(0)
    return t.sum(0, keepdim=True) if positions == "sum" else t


def node_tables(sites, positions, n_pos):
    """Per site: feature id grid ``[npos][d_sae]`` and error ids ``[npos]``; input ids ``[npos]``."""
    pos_ids = _pos_ids(positions, n_pos)
    feats = {i: [[s.feature(f, p) for f in range(s.d_sae)] for p in pos_ids] for i, s in enumerate(sites)}
    errs = {i: [s.error(p) for p in pos_ids] for i, s in enumerate(sites)}
    inputs = [names.with_pos(names.INPUT, p) if p is not None else names.INPUT for p in pos_ids]
    return feats, errs, inputs


def check_graph_args(baseline: str | Baseline, positions: str) -> None:
    """Raise ``ValueError`` for an unknown baseline kind or positions mode."""
    if not isinstance(baseline, Baseline):
        check_kind(baseline, BASELINES, "feature baseline")
    if positions not in POSITIONS:
        raise InputError(f"positions must be 'each' (one node per position) or 'sum' (aggregated), got {positions!r}")


METHODS = ("ig", "attribution")


def _interp(clean: Tensor, delta: Tensor, alpha: float) -> Tensor:
    return (clean + alpha * delta).detach().requires_grad_(True)


def grad_or_zeros(outputs, inputs, grad_outputs=None, batched: bool = False):
    """``torch.autograd.grad`` (graph kept), zeros for inputs the outputs do not depend on."""
    grads = torch.autograd.grad(outputs, inputs, grad_outputs=grad_outputs, retain_graph=True, allow_unused=True,
                                is_grads_batched=batched)
    lead = (grad_outputs[0].shape[0],) if batched else ()
    return [x.new_zeros(*lead, *x.shape) if g is None else g for g, x in zip(grads, inputs, strict=True)]


def feature_graph(model, saes, task, *, method: str = "ig", steps: int = 8, baseline: str | Baseline = "mean",
                  positions: str = "each", node_threshold: float = 0.0, max_nodes: int | None = None,
                  chunk: int = 64, progress: bool = True) -> FeatureGraph:
    """Estimates for every node of the feature graph and for the edges among the candidates.

    ``method``: ``"attribution"`` (first order: gradients at the clean run) or ``"ig"``
    (integrated gradients, Marks et al.'s version: each node group, the input or one site, is moved
    along ``clean + α Δ`` for ``steps`` midpoints α while the rest of the model runs, and the
    gradients are averaged; for edges, the sites between the two ends are held at their clean
    values). IG sees effects a gradient at the clean run misses, e.g. through a saturated
    attention softmax.

    Candidate nodes: per site, the features and errors with ``|IE| > node_threshold`` (at most
    ``max_nodes`` features per site, largest first), every input position, and ``logits``. Edges
    are computed into each candidate from every upstream candidate (backward passes batched
    ``chunk`` at a time); edges estimated at exactly 0 (no direct path) are left out. Returns a
    `FeatureGraph`; ``circuitkit.circuit.features.feature_circuit`` makes it a Circuit.
    """
    check_graph_args(baseline, positions)
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if method == "ig" and (not isinstance(steps, int) or steps < 1):
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    task.check_model(model)
    sites = make_sites(model, saes)
    clean = check_token_ids(model, task.clean)
    n_pos, n = clean.shape[1], len(sites)
    base = resolve_baseline(model, sites, task, baseline)
    feats, errs, inputs = node_tables(sites, positions, n_pos)
    x_clean = clean_input(model, clean)
    crec = SpliceRecord()
    m0 = _run(model, sites, clean, task, record=crec)
    c_acts = {i: a.detach() for i, a in crec.acts.items()}
    c_errs = {i: e.detach() for i, e in crec.errors.items()}
    d_in = base.input - x_clean
    d_acts = [base.acts[i] - c_acts[i] for i in range(n)]
    d_err = [base.errors[i] - c_errs[i] for i in range(n)]
    alphas = [0.0] if method == "attribution" else [(k + 0.5) / steps for k in range(steps)]

    # --- node gradients (total: everything downstream of the moved group runs) ---
    g_in = torch.zeros_like(x_clean)
    g_acts = [torch.zeros_like(c_acts[i]) for i in range(n)]
    g_err = [torch.zeros_like(c_errs[i]) for i in range(n)]
    groups = [None] if method == "attribution" else [-1, *range(n)]
    for group in tqdm([(g, a) for g in groups for a in alphas], desc="feature-graph nodes",
                      disable=not progress, leave=False):
        unit, alpha = group

        def move(i, acts, err, unit=unit, alpha=alpha):
            if i == unit:
                return _interp(c_acts[i], d_acts[i], alpha), _interp(c_errs[i], d_err[i], alpha)
            return acts, err

        x_in = _interp(x_clean, d_in, alpha) if unit == -1 else x_clean
        with splice_run(model, sites, intervene=move, input_leaf=True, input_value=x_in) as rec:
            metric = task.score(model(clean))
        if unit is None or unit == -1:
            g_in += grad_or_zeros(metric, [rec.input])[0] / len(alphas)
        wanted = range(n) if unit is None else ([unit] if unit >= 0 else [])
        for i in wanted:
            ga, ge = grad_or_zeros(metric, [rec.leaves_acts[i], rec.leaves_errors[i]])
            g_acts[i] += ga / len(alphas)
            g_err[i] += ge / len(alphas)

    labels: list[str] = list(inputs)
    ie_in = reduce_prompts((g_in * d_in).sum(-1), positions)
    values: list[Tensor] = [ie_in]
    ie_acts, ie_err = [], []
    for i in range(n):
        ie_acts.append(reduce_prompts(g_acts[i] * d_acts[i], positions))  # [npos, d_sae]
        ie_err.append(reduce_prompts((g_err[i] * d_err[i]).sum(-1), positions))  # [npos]
        labels += [x for row in feats[i] for x in row] + errs[i]
        values += [ie_acts[i].reshape(-1), ie_err[i]]
    meta = {"baseline": base.kind, "positions": positions, "clean_metric": m0, "steps": len(alphas)}
    node_scores = Scores(torch.cat(values).detach(), labels, f"feature-{method}", task=task.name,
                         metric=task.metric_name, meta=dict(meta))

    # --- candidates ---
    cand_feats: list[list[tuple[int, int]]] = []
    cand_errs: list[list[int]] = []
    for i in range(n):
        flat = ie_acts[i].abs().reshape(-1)
        order = torch.argsort(flat, descending=True).tolist()
        keep = [j for j in order if float(flat[j]) > node_threshold]
        keep = keep[:max_nodes] if max_nodes is not None else keep
        cand_feats.append([divmod(j, sites[i].d_sae) for j in keep])
        cand_errs.append([p for p in range(ie_err[i].shape[0]) if float(ie_err[i][p].abs()) > node_threshold])
    candidates = list(inputs) + [feats[i][p][f] for i in range(n) for p, f in cand_feats[i]] + \
        [errs[i][p] for i in range(n) for p in cand_errs[i]] + [names.LOGITS]

    # --- downstream jobs per site: (child id, grad_output for acts, grad_output for errors) ---
    def cols(p: int):
        return slice(None) if positions == "sum" else slice(p, p + 1)

    jobs: dict[int, list[tuple[str, str, int, int]]] = {t: [] for t in range(n)}
    for t in range(n):
        for p, f in cand_feats[t]:
            if bool(g_acts[t][:, cols(p), f].abs().sum()):  # else every edge into it is 0
                jobs[t].append((feats[t][p][f], "a", p, f))
        for p in cand_errs[t]:
            jobs[t].append((errs[t][p], "e", p, -1))

    def grad_outputs(t: int, batch: list[tuple[str, str, int, int]]):
        ga = torch.zeros(len(batch), *g_acts[t].shape)
        ge = torch.zeros(len(batch), *g_err[t].shape)
        for j, (_, kind, p, f) in enumerate(batch):
            c = cols(p)
            if kind == "a":
                ga[j, :, c, f] = g_acts[t][:, c, f]
            else:
                ge[j, :, c] = g_err[t][:, c]
        return ga, ge

    # weights[(unit, child)] = reduced edge weights from every node of ``unit``
    weights: dict[tuple[int, str], list[Tensor]] = {}

    def accumulate(unit: int, child: str, g_up: Sequence[Tensor | None]) -> None:
        if unit == -1:
            parts = [reduce_prompts((g_up[0] * d_in).sum(-1), positions)]
        else:
            parts = [reduce_prompts(g_up[0] * d_acts[unit], positions), reduce_prompts((g_up[1] * d_err[unit]).sum(-1), positions)]
        parts = [x / len(alphas) for x in parts]
        key = (unit, child)
        if key in weights:
            weights[key] = [w + x for w, x in zip(weights[key], parts, strict=True)]
        else:
            weights[key] = parts

    total = sum((len(alphas) * (1 + sum(-(-len(jobs[t]) // chunk) for t in range(u + 1, n)))) for u in range(-1, n))
    bar = tqdm(total=total, desc="feature-graph edges", disable=not progress, leave=False)
    for unit in range(-1, n):
        for alpha in alphas:
            def hold(i, acts, err, unit=unit, alpha=alpha):
                if i == unit:
                    return _interp(c_acts[i], d_acts[i], alpha), _interp(c_errs[i], d_err[i], alpha)
                if i > unit:
                    return c_acts[i], c_errs[i]
                return acts, err

            x_in = _interp(x_clean, d_in, alpha)
            with splice_run(model, sites, intervene=hold, cut=True, input_leaf=True, input_value=x_in) as cut:
                metric = task.score(model(clean))
            ups = [cut.input] if unit == -1 else [cut.leaves_acts[unit], cut.leaves_errors[unit]]
            accumulate(unit, names.LOGITS, grad_or_zeros(metric, ups))
            bar.update()
            for t in range(unit + 1, n):
                for start in range(0, len(jobs[t]), chunk):
                    batch = jobs[t][start:start + chunk]
                    ga, ge = grad_outputs(t, batch)
                    g_up = grad_or_zeros([cut.acts[t], cut.errors[t]], ups, [ga, ge], batched=True)
                    for j, (child, *_rest) in enumerate(batch):
                        accumulate(unit, child, [g[j] for g in g_up])
                    bar.update()
    bar.close()

    cand_set = set(candidates)
    edge_labels: list[str] = []
    edge_values: list[float] = []
    for (unit, child), parts in weights.items():
        if unit == -1:
            pairs = [(inputs[p], parts[0][p]) for p in range(len(inputs))]
        else:
            pairs = [(feats[unit][p][f], parts[0][p, f]) for p, f in cand_feats[unit]]
            pairs += [(errs[unit][p], parts[1][p]) for p in cand_errs[unit]]
        for parent, value in pairs:
            value = float(value)
            if value != 0.0 and parent in cand_set:
                edge_labels.append(names.edge(parent, child))
                edge_values.append(value)
    edge_scores = Scores(torch.tensor(edge_values, dtype=torch.float32), edge_labels, f"feature-{method}",
                         task=task.name, metric=task.metric_name, meta=dict(meta))
    return FeatureGraph(node_scores, edge_scores, sites, positions, base.kind, candidates,
                        meta={**meta, "n_candidates": len(candidates), "node_threshold": node_threshold,
                              "max_nodes": max_nodes})


# --- exact effects -------------------------------------------------------------------------------

def _site_index(sites: Sequence[Site]) -> dict[tuple[int, str], int]:
    return {(s.layer, s.short): i for i, s in enumerate(sites)}


@dataclass(frozen=True)
class _Ref:
    """A parsed graph node: ``where`` -1 input, site index, or len(sites) for logits."""

    kind: str  # input | feature | error | logits
    where: int
    pos: int | None
    index: int | None


def _ref(node_id: str, sites: Sequence[Site]) -> _Ref:
    node = names.parse_node(node_id)
    if node.kind == "input":
        return _Ref("input", -1, node.pos, None)
    if node.kind == "logits":
        return _Ref("logits", len(sites), None, None)
    if node.kind in ("feature", "error"):
        index = _site_index(sites).get((node.layer, node.hook))
        if index is None:
            known = [names.error(s.layer, s.short) for s in sites]
            raise InputError(f"{node_id!r} names no spliced site; the sites are {known}")
        if node.kind == "feature" and not 0 <= node.index < sites[index].d_sae:
            raise InputError(f"{node_id!r}: feature index out of range 0..{sites[index].d_sae - 1}")
        return _Ref(node.kind, index, node.pos, node.index)
    raise InputError(f"{node_id!r} is not a feature-graph node (input, f.., e.., logits)")


def _pos_mask(like: Tensor, pos: int | None) -> Tensor:
    """``[1, pos, 1]`` mask selecting ``pos`` (every position when None)."""
    mask = torch.zeros(1, like.shape[1], 1, dtype=like.dtype, device=like.device)
    if pos is None:
        mask[:] = 1.0
    else:
        mask[:, pos] = 1.0
    return mask


def _set(value: Tensor, new: Tensor, ref: _Ref) -> Tensor:
    """``value`` with node ``ref`` (at its position, or all) replaced by ``new``'s entries."""
    mask = _pos_mask(value, ref.pos)
    if ref.kind == "feature":
        sel = torch.zeros(value.shape[-1], dtype=value.dtype, device=value.device)
        sel[ref.index] = 1.0
        mask = mask * sel
    return value * (1 - mask) + new * mask


@torch.no_grad()
def _run(model, sites, tokens, task, intervene=None, input_value=None, record=None) -> float:
    with splice_run(model, sites, intervene=intervene, input_value=input_value, record=record):
        return float(task.score(model(tokens)))


@torch.no_grad()
def clean_input(model, tokens) -> Tensor:
    """The input node's value: the residual stream before block 0, ``[batch, pos, d_model]``."""
    _, cache = model.run_with_cache(tokens, names_filter=[INPUT_HOOK])
    return cache[INPUT_HOOK].clone()


@torch.no_grad()
def exact_node_effects(model, saes, task, nodes: Sequence[str], *, baseline: str | Baseline = "mean",
                       progress: bool = True) -> Scores:
    """Metric change when each node alone takes its baseline value (every other node computed
    from its inputs as usual). One forward pass per node; same ids and sign as the estimates."""
    sites = make_sites(model, saes)
    base = resolve_baseline(model, sites, task, baseline)
    clean = check_token_ids(model, task.clean)
    m0 = _run(model, sites, clean, task)
    values = []
    for node in tqdm(list(nodes), desc="exact node effects", disable=not progress, leave=False):
        ref = _ref(node, sites)
        if ref.kind == "logits":
            raise InputError("'logits' is the metric, not a node to patch")
        if ref.kind == "input":
            x0 = _set(clean_input(model, clean), base.input, ref)
            values.append(_run(model, sites, clean, task, input_value=x0) - m0)
            continue

        def intervene(i, acts, err, ref=ref):
            if i != ref.where:
                return acts, err
            if ref.kind == "feature":
                return _set(acts, base.acts[i], ref), err
            return acts, _set(err, base.errors[i], ref)

        values.append(_run(model, sites, clean, task, intervene) - m0)
    return Scores(torch.tensor(values), list(nodes), "feature-patching", task=task.name, metric=task.metric_name,
                  meta={"baseline": base.kind, "clean_metric": m0})


@torch.no_grad()
def exact_edge_effects(model, saes, task, edges: Sequence[str], *, baseline: str | Baseline = "mean",
                       progress: bool = True) -> Scores:
    """Exact direct effect of each edge ``u -> d``: patch ``u`` to its baseline with every site
    strictly between them held at its clean values, read ``d``'s new value, then run the clean
    model with only ``d`` moved to it (for ``d = logits``: the metric of the first run). Two
    forward passes per edge; same ids and sign as the estimates."""
    sites = make_sites(model, saes)
    base = resolve_baseline(model, sites, task, baseline)
    clean = check_token_ids(model, task.clean)
    clean_rec = SpliceRecord()
    m0 = _run(model, sites, clean, task, record=clean_rec)
    clean_acts = {i: a.clone() for i, a in clean_rec.acts.items()}
    clean_errs = {i: e.clone() for i, e in clean_rec.errors.items()}
    x_clean = clean_input(model, clean)
    values = []
    for label in tqdm(list(edges), desc="exact edge effects", disable=not progress, leave=False):
        e = names.parse_edge(label)
        u, d = _ref(e.parent, sites), _ref(e.child, sites)
        if u.where >= d.where:
            raise InputError(f"edge {label!r} does not run forward through the spliced sites")

        def first(i, acts, err, u=u, d=d):
            if u.where < i < d.where:
                return clean_acts[i], clean_errs[i]
            if i == u.where:
                if u.kind == "feature":
                    return _set(acts, base.acts[i], u), err
                return acts, _set(err, base.errors[i], u)
            return acts, err

        x0 = _set(x_clean, base.input, u) if u.kind == "input" else None
        rec = SpliceRecord()
        m1 = _run(model, sites, clean, task, first, input_value=x0, record=rec)
        if d.kind == "logits":
            values.append(m1 - m0)
            continue
        moved_acts, moved_err = rec.acts[d.where].clone(), rec.errors[d.where].clone()

        def second(i, acts, err, d=d, moved_acts=moved_acts, moved_err=moved_err):
            if i != d.where:
                return acts, err
            if d.kind == "feature":
                return _set(acts, moved_acts, d), err
            return acts, _set(err, moved_err, d)

        values.append(_run(model, sites, clean, task, second) - m0)
    return Scores(torch.tensor(values), list(edges), "feature-edge-patching", task=task.name,
                  metric=task.metric_name, meta={"baseline": base.kind, "clean_metric": m0})


# --- ablation runs (faithfulness) --------------------------------------------------------------

@torch.no_grad()
def run_with_features(model, sites: Sequence[Site], tokens, base: Baseline, keep_acts: dict[int, Tensor],
                      keep_errors: dict[int, Tensor]) -> Tensor:
    """Logits with every feature / error outside the kept masks at its baseline value.

    ``keep_acts[i]``: bool ``[pos, d_sae]``; ``keep_errors[i]``: bool ``[pos]``. Kept nodes are
    computed from their (possibly changed) inputs; the input node is always kept.
    """
    def intervene(i, acts, err):
        ka = keep_acts[i].to(acts.device).unsqueeze(0)
        ke = keep_errors[i].to(err.device)[None, :, None]
        return torch.where(ka, acts, base.acts[i]), torch.where(ke, err, base.errors[i])

    with splice_run(model, sites, intervene=intervene):
        return model(tokens)
