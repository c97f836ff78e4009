"""What every attribution method shares: input checks, prompt batches and the Scores' meta."""

from __future__ import annotations

import torch
from torch import Tensor

from circuitkit.ablation.edges import GraphIndex, graph_index, model_device
from circuitkit.ablation.kinds import check_kind


def prepare_attribution(model, task, ablation: str | None = None, steps: int | None = None, batch_size: int | None = None):
    """Validate everything before any work starts; returns the task on the model's device."""
    if ablation is not None:
        check_kind(ablation)
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer (number of integrated-gradient points), got {steps!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    task.check_model(model)
    index = graph_index(model)
    return task.to(model_device(model)), index


def prompt_batches(n: int, batch_size: int | None) -> list[Tensor]:
    size = n if batch_size is None else batch_size
    return [torch.arange(i, min(n, i + size)) for i in range(0, n, size)]


def source_rows(source: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    """Source outputs of some prompts (per-position means / zeros have one row for all)."""
    return {k: v if v.shape[0] == 1 else v[idx.to(v.device)] for k, v in source.items()}


def scores_meta(model, index: GraphIndex, **extra) -> dict:
    return {"n_layers": index.n_layers, "n_heads": index.n_heads, "model": model.cfg.model_name, **extra}
