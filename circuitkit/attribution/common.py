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


# Scores (metric units) and per-prompt metric gradients below these are float noise around 0.
ZERO_SCORE = 1e-5
ZERO_GRADIENT = 1e-6


def check_nonzero_scores(model, task, scores: Tensor, method: str) -> None:
    """Refuse gradient scores that are all (about) 0, naming the cause: a metric whose gradient
    vanishes at the clean run (a distance to the clean output, KL to the clean distribution: the
    clean run is their minimum), or a corruption that changes nothing. Costs one forward pass,
    and only when every score is below ``ZERO_SCORE``."""
    if scores.numel() == 0 or float(scores.abs().max()) > ZERO_SCORE:
        return
    with torch.no_grad():
        logits = model(task.clean)
    logits = logits.detach().float().requires_grad_(True)
    (grad,) = torch.autograd.grad(task.per_prompt(logits).sum(), logits, allow_unused=True)
    if grad is None or float(grad.abs().max()) <= ZERO_GRADIENT:
        raise ValueError(
            f"{method}: every score is about 0 because the gradient of metric {task.metric_name!r} is 0 at the clean run "
            "(a distance to the clean output or KL to the clean distribution is at its minimum there), and "
            f"{method} multiplies by that gradient; use eap_ig (steps > 1, gradients along the path from the "
            "corrupted run), exact patching (exact_edge_patching / method 'exact'), or a metric whose gradient "
            "is not 0 at the clean run (logit_diff, answer_logprob, or the distance to the corrupted output)"
        )
    raise ValueError(
        f"{method}: every score is about 0 (below {ZERO_SCORE:g}) though the metric's gradient is not: the "
        "ablation source (nearly) equals the clean run (corrupted prompts identical to the clean ones, or a mean "
        "over a single prompt); use corrupted prompts that differ, or more prompts"
    )


def prompt_batches(n: int, batch_size: int | None) -> list[Tensor]:
    size = n if batch_size is None else batch_size
    return [torch.arange(i, min(n, i + size)) for i in range(0, n, size)]


def source_rows(source: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    """Source outputs of some prompts (per-position means / zeros have one row for all)."""
    return {k: v if v.shape[0] == 1 else v[idx.to(v.device)] for k, v in source.items()}


def scores_meta(model, index: GraphIndex, **extra) -> dict:
    return {"n_layers": index.n_layers, "n_heads": index.n_heads, "model": model.cfg.model_name, **extra}
