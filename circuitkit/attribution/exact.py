"""Exact edge patching: every edge ablated alone (:func:`circuitkit.ablation.edges.run_with_mask`,
many edges per batched forward pass) — the ground truth the attribution estimates approximate."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from circuitkit.ablation.edges import ablation_source, model_device, run_with_mask
from circuitkit.ablation.kinds import DEFAULT_ABLATION
from circuitkit.attribution.common import (
    prepare_attribution,
    scores_meta,
)
from circuitkit.scores import Scores


def exact_edge_patching(
    model,
    task,
    edges: Iterable[str] | None = None,
    ablation: str = DEFAULT_ABLATION,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> Scores:
    """``metric(clean with the edge ablated) - metric(clean)`` for each edge, exactly.

    ``edges``: edge ids (all of :func:`~circuitkit.ablation.edges.graph_edges` by default). Each forward pass runs
    ``max(1, batch_size // n_prompts)`` edges at once, each on its own copy of the prompts with
    its own edge mask. Unknown edge names raise ``ValueError`` before any run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    task, index = prepare_attribution(model, task, ablation)
    edge_list = list(index.edges) if edges is None else ([edges] if isinstance(edges, str) else list(edges))
    if not edge_list:
        raise ValueError("no edges to patch; pass edge ids or edges=None for all of them")
    if len(set(edge_list)) != len(edge_list):
        raise ValueError("edges contains repeats; pass each edge once")
    device = model_device(model)
    cells = torch.tensor([index.cell(e) for e in edge_list], device=device)  # validates names first
    source = ablation_source(model, task, ablation, seed=seed)
    n = len(task)
    per_run = max(1, batch_size // n)
    values = torch.empty(len(edge_list))
    with torch.no_grad():
        clean_metric = task.score(model(task.clean))
        for start in tqdm(range(0, len(edge_list), per_run), disable=not progress, desc="exact edge patching"):
            chunk = cells[start:start + per_run]
            k = len(chunk)
            masks = torch.zeros((k, *index.shape), device=device)
            masks[torch.arange(k, device=device), chunk[:, 0], chunk[:, 1]] = 1.0
            masks = masks.repeat_interleave(n, 0)  # [k * n, slots, upstream]: edge-major
            src = {key: v if v.shape[0] == 1 else v.repeat(k, 1, 1) for key, v in source.items()}
            repeated = task.subset(torch.arange(n).repeat(k))
            logits = run_with_mask(model, task.clean.repeat(k, 1), masks, src)
            per_prompt = repeated.per_prompt(logits).reshape(k, n).mean(1)
            values[start:start + k] = (per_prompt - clean_metric).cpu()
    return Scores(values, edge_list, "exact", task.name, task.metric_name,
                  meta=scores_meta(model, index, level="edge", ablation=ablation, clean_metric=float(clean_metric)))


