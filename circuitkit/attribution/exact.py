"""Exact edge patching: every edge ablated alone (`circuitkit.ablation.edges.run_with_mask`,
many edges per batched forward pass) — the ground truth the attribution estimates approximate;
with ``by_pos``, every edge at every position alone."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit.ablation.edges import ablation_source, model_device, run_with_mask
from circuitkit.ablation.kinds import DEFAULT_ABLATION
from circuitkit.attribution.common import (
    memory_budget,
    position_matrix_bytes,
    prepare_attribution,
    scores_meta,
)
from circuitkit.errors import InputError
from circuitkit.scores import Scores


def exact_edge_patching(
    model,
    task,
    edges: Iterable[str] | None = None,
    ablation: str = DEFAULT_ABLATION,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    by_pos: bool = False,
    max_memory: float | None = None,
    source: dict[str, Tensor] | None = None,
) -> Scores:
    """``metric(clean with the edge ablated) - metric(clean)`` for each edge, exactly.

    ``edges``: edge ids (all of `graph_edges` by default). Each forward pass runs
    ``max(1, batch_size // n_prompts)`` edges at once, each on its own copy of the prompts with
    its own edge mask. Unknown edge names raise ``ValueError`` before any run.

    ``by_pos``: patch each edge at one token position only (``run_with_mask``'s
    position-resolved mask): ``edges`` are position-resolved ids (``a0.h0@3->a1.h0@3<k>``; all of
    them, position-major, by default). A run's masks are ``[runs x prompts, n_pos, n_slots,
    n_upstream]``: fewer edges share a run where ``max_memory`` (bytes; by default half the
    memory available) holds fewer, ``ValueError`` before any run when not even one fits.
    ``source``: the ablation source already computed for this task and ``ablation``
    (``ablation_source``); computed here otherwise.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> edges = ["a0.h0->a1.h0<k>", "a0.h1->a1.h0<k>"]  # from the previous-token head, and not
        >>> scores = ck.exact_edge_patching(model, task, edges=edges, progress=False)
        >>> round(scores["a0.h0->a1.h0<k>"], 2), round(scores["a0.h1->a1.h0<k>"], 2)
        (-12.0, 0.0)
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    task, index = prepare_attribution(model, task, ablation)
    n, n_pos = len(task), task.clean.shape[1]
    everything = index.position_edges(n_pos) if by_pos else list(index.edges)
    edge_list = everything if edges is None else ([edges] if isinstance(edges, str) else list(edges))
    if not edge_list:
        raise InputError("no edges to patch; pass edge ids or edges=None for all of them")
    if len(set(edge_list)) != len(edge_list):
        raise InputError("edges contains repeats; pass each edge once")
    device = model_device(model)
    per_run = max(1, batch_size // n)
    if by_pos:
        cells = [index.position_cell(e) for e in edge_list]  # validates names first
        unplaced = [e for e, (p, _, _) in zip(edge_list, cells, strict=True) if p is None or not 0 <= p < n_pos]
        if unplaced:
            raise InputError(f"by_pos patches edges at one position each: {unplaced[0]!r} needs a position in "
                             f"0..{n_pos - 1} at both ends (names.edge_at(edge, pos), e.g. 'a0.h0@3->a1.h0@3<k>')")
        budget = memory_budget(max_memory)
        fits = int(budget // (n * position_matrix_bytes(index, n_pos)))
        if fits < 1:
            raise InputError(
                f"exact_edge_patching by_pos: one edge's masks for {n} prompts of {n_pos} tokens take about "
                f"{n * position_matrix_bytes(index, n_pos) / 2**30:.3g} GiB, over the memory budget of "
                f"{budget / 2**30:.3g} GiB; use fewer or shorter prompts or a larger max_memory (bytes)")
        per_run = min(per_run, fits)
    else:
        with_pos = [e for e in edge_list if "@" in e]
        if with_pos:
            raise InputError(f"edge {with_pos[0]!r} carries positions; pass by_pos=True to patch edges at one position")
        cells = [(None, *index.cell(e)) for e in edge_list]  # validates names first
    cells = torch.tensor([(p or 0, r, c) for p, r, c in cells], device=device)
    source = ablation_source(model, task, ablation, seed=seed) if source is None else source
    values = torch.empty(len(edge_list))
    with torch.no_grad():
        clean_metric = task.score(model(task.clean))
        for start in tqdm(range(0, len(edge_list), per_run), disable=not progress, desc="exact edge patching"):
            chunk = cells[start:start + per_run]
            k = len(chunk)
            rows = torch.arange(k, device=device)
            if by_pos:
                masks = torch.zeros((k, n_pos, *index.shape), device=device)
                masks[rows, chunk[:, 0], chunk[:, 1], chunk[:, 2]] = 1.0
            else:
                masks = torch.zeros((k, *index.shape), device=device)
                masks[rows, chunk[:, 1], chunk[:, 2]] = 1.0
            masks = masks.repeat_interleave(n, 0)  # [k * n, (pos,) slots, upstream]: edge-major
            src = {key: v if v.shape[0] == 1 else v.repeat(k, 1, 1) for key, v in source.items()}
            repeated = task.subset(torch.arange(n).repeat(k))
            logits = run_with_mask(model, task.clean.repeat(k, 1), masks, src, by_pos=by_pos)
            per_prompt = repeated.per_prompt(logits).reshape(k, n).mean(1)
            values[start:start + k] = (per_prompt - clean_metric).cpu()
    return Scores(values, edge_list, "exact", task.name, task.metric_name,
                  meta=scores_meta(model, index, level="edge", ablation=ablation, by_pos=by_pos,
                                    clean_metric=float(clean_metric)))


