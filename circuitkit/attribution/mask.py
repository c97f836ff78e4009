"""Integrated gradients over the edge mask (auto-circuit's ``mask_gradient_prune_scores`` with
``integrated_grad_samples``).

Every edge of the graph carries a mask value ``m``; an edge reads ``live + m (source - live)``
(`run_with_mask`). All masks move together from 0 (clean) to 1
(every edge ablated), and an edge's score is its mask gradient ``dM/dm_e`` averaged over the
points ``m = k / (steps - 1)``, ``k = 0..steps-1`` (``m = 0`` alone when ``steps == 1``, which is
EAP). Summed over all edges, the scores approach ``metric(every edge ablated) - metric(clean)``
(the path integral along the diagonal), closer as ``steps`` grows.

auto-circuit sums the gradients of its loss ``-metric`` over ``integrated_grad_samples + 1``
points ``k / integrated_grad_samples``: with ``steps = integrated_grad_samples + 1`` its score
is ``-steps`` times this one.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit.ablation.edges import GraphIndex, model_device, run_with_mask
from circuitkit.attribution.common import prompt_batches, rows_of


def mask_alphas(steps: int) -> list[float]:
    """The mask values the gradient is taken at: ``k / (steps - 1)`` for ``k = 0..steps-1``."""
    return [0.0] if steps == 1 else [k / (steps - 1) for k in range(steps)]


def mask_ig_matrix(model, task, index: GraphIndex, source, steps: int, batch_size: int | None,
                   progress: bool, by_pos: bool = False) -> Tensor:
    """``[n_slots, n_upstream]``: the mean over `mask_alphas` of ``dM/dm`` with every edge's
    mask at that value (0 where the graph has no edge). ``source``: node outputs of every prompt
    (`ablation_source`) or ``idx -> those of prompts idx``
    (`batch_source`). ``steps * batches`` forward + backward
    passes of the edge-mask engine. ``by_pos``: one mask per position,
    ``[n_pos, n_slots, n_upstream]`` scores."""
    source_of = rows_of(source)
    device = model_device(model)
    valid = index.valid_mask(device)
    if by_pos:
        valid = valid[None].expand(task.clean.shape[1], -1, -1)
    scores = torch.zeros(valid.shape, device=device)
    alphas = mask_alphas(steps)
    batches = prompt_batches(len(task), batch_size)
    bar = tqdm(total=len(batches) * len(alphas), disable=not progress, desc=f"EAP-IG ({steps} steps, mask)")
    for idx in batches:
        sub = task.subset(idx.cpu())
        src = source_of(idx)
        for alpha in alphas:
            mask = (valid.float() * alpha).requires_grad_(True)
            metric = sub.per_prompt(run_with_mask(model, sub.clean, mask, src, by_pos=by_pos)).sum() / len(task)
            (grad,) = torch.autograd.grad(metric, mask)
            scores += grad * valid
            bar.update()
    bar.close()
    return scores / len(alphas)
