"""Edge pruning (Bhaskar et al. 2024): learn a mask over the residual-stream edge graph.

Each edge ``e`` has a hard-concrete gate ``z_e in [0, 1]`` (Louizos et al. 2018) with a learned
location ``log_alpha_e``; a run keeps ``z_e`` of the edge's live value and ablates ``1 - z_e``
(the edge-mask state of :func:`~circuitkit.ablation.edges.run_with_mask`, so every architecture
the edge graph supports is supported). The objective is faithfulness to the full model, KL(full ||
masked) at the answer position(s) (the squared distance for a model with one numeric output:
:func:`~circuitkit.tasks.metrics.divergence`), plus ``sparsity`` times the expected fraction of edges kept; the
sparsity weight grows until the expected number of kept edges reaches ``target_edges`` (a simple
stand-in for the paper's Lagrangian). Each edge's score is the probability that its learned gate
is open (``P(z_e > 0)``, in float64 so that ranks do not tie where gates saturate): rank them
(``discover`` does) to read off a circuit of any size.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from circuitkit.ablation.edges import ablation_source, graph_index, model_device, run_with_mask
from circuitkit.ablation.kinds import DEFAULT_ABLATION
from circuitkit.attribution.common import scores_meta
from circuitkit.scores import Scores
from circuitkit.tasks.metrics import divergence

# hard-concrete stretch (gamma, zeta) and temperature, as Louizos et al. 2018 and Edge Pruning use
_GAMMA, _ZETA, _BETA = -0.1, 1.1, 2.0 / 3.0


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


def edge_pruning(
    model,
    task,
    ablation: str = DEFAULT_ABLATION,
    *,
    target_edges: int | None = None,
    steps: int = 300,
    lr: float = 0.1,
    sparsity: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> Scores:
    """Learn which edges the model's behaviour on ``task`` needs; one score (the probability that
    the edge's gate is open) per edge of :func:`~circuitkit.ablation.edges.graph_edges`, higher =
    more needed. Unlike the attribution methods, this is not an estimate of an ablation's effect.

    ``ablation``: what a pruned edge carries instead (see ``ablation_source``). ``target_edges``:
    the expected number of edges to keep (default: a tenth of the graph); the sparsity weight,
    starting at ``sparsity``, doubles every tenth of the run while more edges than that are
    expected to be kept. ``steps`` Adam steps at learning rate ``lr``, each one forward + backward
    over all prompts; deterministic for a ``seed``. Gradients go only to the gates, never to the
    model's weights.
    """
    if steps < 1 or lr <= 0 or sparsity < 0:
        raise ValueError(f"edge pruning needs steps >= 1, lr > 0 and sparsity >= 0; got steps={steps}, lr={lr}, "
                         f"sparsity={sparsity}")
    task.check_model(model)
    index = graph_index(model)
    n_edges = len(index.edges)
    target = max(1, n_edges // 10) if target_edges is None else int(target_edges)
    if not 1 <= target <= n_edges:
        raise ValueError(f"target_edges must be between 1 and the graph's {n_edges} edges, got {target_edges}")
    device = model_device(model)
    task = task.to(device)
    source = ablation_source(model, task, ablation, seed=seed)
    flat = index.flat_edge_index().to(device)
    with torch.no_grad():
        full_logits = model(task.clean)
    generator = torch.Generator().manual_seed(seed)
    log_alpha = torch.full((n_edges,), 3.0, device=device, requires_grad=True)  # start near "keep all"
    optimizer = torch.optim.Adam([log_alpha], lr=lr)
    weight = float(sparsity)
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for step in tqdm(range(steps), desc="edge pruning", disable=not progress):
            mask = torch.zeros(index.shape[0] * index.shape[1], device=device)
            mask = mask.index_put((flat,), 1.0 - _gates(log_alpha, generator)).reshape(index.shape)
            with torch.enable_grad():
                faithfulness = divergence(run_with_mask(model, task.clean, mask, source), task, full_logits).mean()
                kept = _expected_kept(log_alpha).sum()
                loss = faithfulness + weight * kept / n_edges
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
            if (step + 1) % max(1, steps // 10) == 0 and float(kept.detach()) > target:
                weight *= 2.0
    finally:
        for p, needed in zip(model.parameters(), frozen, strict=True):
            p.requires_grad_(needed)
    values = _expected_kept(log_alpha.detach().double()).cpu()
    return Scores(values, list(index.edges), "edge-pruning", task.name, "kl",
                  meta=scores_meta(model, index, level="edge", ablation=ablation, target_edges=target, steps=steps,
                                   expected_kept=float(_expected_kept(log_alpha.detach()).sum()), seed=seed))
