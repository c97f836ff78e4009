"""Edge pruning (Bhaskar et al. 2024): learn a mask over the residual-stream edge graph.

Each edge ``e`` has a hard-concrete gate ``z_e in [0, 1]`` (Louizos et al. 2018) with a learned
location ``log_alpha_e``; a run keeps ``z_e`` of the edge's live value and ablates ``1 - z_e``
(the edge-mask state of `run_with_mask`, so every architecture
the edge graph supports is supported). Every prompt of a step draws its own sample of the gates.

**Objective.** The paper's constrained one: minimise a faithfulness loss subject to the expected
number of open gates ``sum_e P(z_e > 0)`` not exceeding a target, through a Lagrange multiplier
``lambda``, the price of an open gate: ``loss = D + lambda * sum_e P(z_e > 0) / n_edges``. ``D``
is, by default (``objective="metric"``), the squared change of the task's own metric per prompt
in units of the full model's distance from the fully ablated one, ``((m(masked) - m(full)) /
|m(full) - m(empty)|)^2`` averaged over prompts: unitless, 0 for a faithful mask, about 1 for
an empty one, and the quantity circuit faithfulness measures. ``objective="kl"`` uses the paper's
KL(full || masked) at the answer position(s) instead (`divergence`).
An edge stays open while what it does for ``D`` is worth more than the price. The price starts
at ``sparsity`` and is multiplied by ``price_step`` at every step the expected count exceeds the
target, divided by it otherwise: it climbs geometrically through every scale until the gates
follow the target, then tracks it.

**Path and score.** The target is annealed: it falls linearly from every edge to
``target_edges`` (default 0) over the first ``anneal`` of the run, then holds. One run thus
traces a regularisation path through every circuit size, and an edge's score is the area under
its survival curve: its open probability ``P(z_e > 0)`` averaged over the steps (float64). An
edge closed early scores near 0, one open to the end near 1, so ranking the scores (``discover``
does) reads off the path's circuit of any size, which is what a ROC-AUC or a faithfulness curve
asks of a ranking. While the price is still small, a gate whose edge the loss does not use drifts
shut (Adam's steps are scale-free), and one the loss needs is held open even where its gradient
appears only in rare samples (tracr's saturated attention has a cliff within a few per cent of
the live value), so the early phase ranks those too.
"""


from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit.ablation.edges import batch_source, graph_index, model_device, run_with_mask
from circuitkit.ablation.kinds import DEFAULT_ABLATION
from circuitkit.attribution.common import rows_of, scores_meta
from circuitkit.errors import InputError
from circuitkit.scores import Scores
from circuitkit.tasks.metrics import divergence

# hard-concrete stretch (gamma, zeta) and temperature, as Louizos et al. 2018 and Edge Pruning use
_GAMMA, _ZETA, _BETA = -0.1, 1.1, 2.0 / 3.0
OBJECTIVES = ("metric", "kl")


def _expected_kept(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(gate > 0) per edge: the expected L0 of the hard-concrete gates."""
    return torch.sigmoid(log_alpha - _BETA * math.log(-_GAMMA / _ZETA))


def _gates(log_alpha: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A sample of the gates (``generator`` given) or their deterministic value (None)."""
    if generator is None:
        s = torch.sigmoid(log_alpha)
    else:
        u = torch.rand(log_alpha.shape, generator=generator).clamp(1e-6, 1 - 1e-6).to(log_alpha.device)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / _BETA)
    return (s * (_ZETA - _GAMMA) + _GAMMA).clamp(0.0, 1.0)


def gate_mask(index, log_alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The ablation mask of `run_with_mask` for gates at ``log_alpha`` (``[n_edges]`` or
    ``[batch, n_edges]``, in ``index.edges`` order): ``1 - z_e`` at each edge's cell, 0 elsewhere,
    ``[(batch,) n_slots, n_upstream]``. ``generator``: sample the gates; None: their deterministic value."""
    flat = index.flat_edge_index().to(log_alpha.device)
    lead = log_alpha.shape[:-1]
    mask = torch.zeros(*lead, index.shape[0] * index.shape[1], device=log_alpha.device, dtype=log_alpha.dtype)
    mask = mask.scatter(-1, flat.expand(*lead, -1), 1.0 - _gates(log_alpha, generator))
    return mask.reshape(*lead, *index.shape)


# How far below the top edge's starting logit a warm start puts the lowest-ranked edge's.
WARM_START_SPREAD = 6.0


def _initial_logits(index, warm_start: Scores | None, spread: float = WARM_START_SPREAD) -> torch.Tensor:
    """Every gate nearly always open (3.0), or a warm start's |score| ranking mapped linearly onto
    ``3.0 .. 3.0 - spread`` (ranks, not values: scale-free)."""
    n_edges = len(index.edges)
    if warm_start is None:
        return torch.full((n_edges,), 3.0)
    given = warm_start.as_dict()
    missing = [e for e in index.edges if e not in given]
    if missing:
        raise InputError(f"warm_start scores lack {len(missing)} of the graph's edges (e.g. {missing[:3]}); give "
                         "edge scores of this model, e.g. from eap_ig")
    magnitude = torch.tensor([abs(float(given[e])) for e in index.edges], dtype=torch.float64)
    rank = torch.empty(n_edges, dtype=torch.float64)
    rank[magnitude.argsort(descending=True, stable=True)] = torch.arange(n_edges, dtype=torch.float64)
    return (3.0 - spread * rank / max(1, n_edges - 1)).float()


def edge_pruning(
    model,
    task,
    ablation: str = DEFAULT_ABLATION,
    *,
    target_edges: int | None = None,
    steps: int = 300,
    lr: float = 0.1,
    sparsity: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 16,
    anneal: float = 0.8,
    price_step: float = 1.05,
    objective: str = "metric",
    source: dict[str, Tensor] | None = None,
    warm_start: Scores | None = None,
    warm_start_spread: float = WARM_START_SPREAD,
) -> Scores:
    """Learn which edges the model's behaviour on ``task`` needs; one score per edge of
    `graph_edges` in [0, 1], higher = more needed: the mean over
    the run of the probability that its gate is open while the target number of open gates is
    annealed from every edge to ``target_edges`` (see the module docstring). Unlike the
    attribution methods, this is not an estimate of an ablation's effect.

    ``ablation``: what a pruned edge carries instead (see ``ablation_source``). ``target_edges``:
    where the path ends (default 0, the empty circuit). ``steps`` Adam steps at learning rate
    ``lr`` on the gates, each a forward + backward over ``batch_size`` prompts (a seeded shuffle of
    the task, cycled through; the cost of a step does not grow with the task); the target falls
    over the first ``anneal`` of them. ``sparsity``: the price's starting value (in units of the
    loss, per whole graph), multiplied or divided by ``price_step`` each step. ``objective``:
    ``"metric"`` (the task metric's normalised squared change) or ``"kl"``. Deterministic for a
    ``seed``. Gradients go only to the gates, never to the model's weights. ``source``: the
    ablation source already computed for this task and ``ablation`` (``ablation_source``).
    ``warm_start``: edge scores (e.g. EAP-IG's) whose |score| ranking sets the gates' starting
    logits, from nearly always open (the top edge, as without a warm start) down to
    ``warm_start_spread`` lower (the last); without it every gate starts nearly always open.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> scores = ck.edge_pruning(model, task, steps=50, progress=False)
        >>> sorted(label for label, _ in scores.top(5))
        ['a0.h0->a1.h0<k>', 'a1.h0->logits', 'input->a0.h0<v>', 'input->a1.h0<q>', 'input->a1.h0<v>']
    """
    if objective not in OBJECTIVES:
        raise InputError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if warm_start_spread < 0:
        raise InputError(f"warm_start_spread must be >= 0 (logits between the top and last edge), got {warm_start_spread}")
    if steps < 1 or lr <= 0 or sparsity <= 0 or batch_size < 1 or not 0 < anneal <= 1 or price_step <= 1:
        raise InputError(f"edge pruning needs steps >= 1, lr > 0, sparsity > 0, batch_size >= 1, 0 < anneal <= 1 and "
                         f"price_step > 1; got steps={steps}, lr={lr}, sparsity={sparsity}, batch_size={batch_size}, "
                         f"anneal={anneal}, price_step={price_step}")
    task.check_model(model)
    index = graph_index(model)
    n_edges = len(index.edges)
    target = 0 if target_edges is None else int(target_edges)
    if not 0 <= target < n_edges:
        raise InputError(f"target_edges must be between 0 and the graph's {n_edges} edges minus one, got {target_edges}")
    device = model_device(model)
    task = task.to(device)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(task), generator=generator)
    sources = batch_source(model, task, ablation, seed, batch_size) if source is None else rows_of(source)
    batches = []  # (task of the batch, its ablation source, the full model's logits on it)
    gap = 1.0
    with torch.no_grad():
        for start in range(0, len(task), batch_size):
            idx = order[start:start + batch_size]
            sub = task.subset(idx)
            batches.append((sub, sources(idx), model(sub.clean)))
        if objective == "metric":
            full = float(task.score(model(task.clean)))
            everything = index.valid_mask().float().to(device)
            gap = abs(full - float(task.score(run_with_mask(model, task.clean, everything,
                                                            sources(torch.arange(len(task)))))))
            if gap < 1e-6:
                raise InputError(f"the {ablation}-ablated model scores the same as the full model on task {task.name!r} "
                                 f"({full:.4g}): the metric objective is undefined; pick another ablation or "
                                 "objective='kl'")
    log_alpha = _initial_logits(index, warm_start, warm_start_spread).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([log_alpha], lr=lr)
    price = float(sparsity)
    area = torch.zeros(n_edges, dtype=torch.float64)
    n_anneal = max(1, round(anneal * steps))
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for step in tqdm(range(steps), desc="edge pruning", disable=not progress):
            goal = n_edges - (n_edges - target) * min(1.0, (step + 1) / n_anneal)
            sub, source, full_logits = batches[step % len(batches)]
            with torch.enable_grad():
                gates = gate_mask(index, log_alpha.expand(len(sub), -1), generator)  # one sample per prompt
                masked = run_with_mask(model, sub.clean, gates, source)
                if objective == "metric":
                    loss = (((sub.per_prompt(masked) - sub.per_prompt(full_logits)) / gap) ** 2).mean()
                else:
                    loss = divergence(masked, sub, full_logits).mean()
                loss = loss + price * _expected_kept(log_alpha).sum() / n_edges
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
            with torch.no_grad():
                kept = _expected_kept(log_alpha.double()).cpu()
                area += kept
                price = price * price_step if float(kept.sum()) > goal else price / price_step
    finally:
        for p, needed in zip(model.parameters(), frozen, strict=True):
            p.requires_grad_(needed)
    return Scores(area / steps, list(index.edges), "edge-pruning", task.name,
                  task.metric_name if objective == "metric" else "kl",
                  meta=scores_meta(model, index, level="edge", ablation=ablation, objective=objective,
                                   warm_start=None if warm_start is None else warm_start.method,
                                   target_edges=target, steps=steps, batch_size=batch_size, anneal=anneal,
                                   price=price, expected_kept=float(kept.sum()), seed=seed))
