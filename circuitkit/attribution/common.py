"""What every attribution method shares: input checks, prompt batches and the Scores' meta."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from circuitkit.ablation.edges import (
    GraphIndex,
    attn_output_norm,
    graph_index,
    model_device,
)
from circuitkit.ablation.kinds import check_kind
from circuitkit.errors import InputError
from circuitkit.models import backend


def prepare_attribution(model, task, ablation: str | None = None, steps: int | None = None, batch_size: int | None = None):
    """Validate everything before any work starts; returns the task on the model's device."""
    if ablation is not None:
        check_kind(ablation)
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise InputError(f"steps must be a positive integer (number of integrated-gradient points), got {steps!r}")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
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
        raise InputError(
            f"{method}: every score is about 0 because the gradient of metric {task.metric_name!r} is 0 at the clean run "
            "(a distance to the clean output or KL to the clean distribution is at its minimum there), and "
            f"{method} multiplies by that gradient; use eap_ig (steps > 1, gradients along the path from the "
            "corrupted run), exact patching (exact_edge_patching / method 'exact'), or a metric whose gradient "
            "is not 0 at the clean run (logit_diff, answer_logprob, or the distance to the corrupted output)"
        )
    raise InputError(
        f"{method}: every score is about 0 (below {ZERO_SCORE:g}) though the metric's gradient is not: the "
        "ablation source (nearly) equals the clean run (corrupted prompts identical to the clean ones, or a mean "
        "over a single prompt); use corrupted prompts that differ, or more prompts"
    )


def prompt_batches(n: int, batch_size: int | None) -> list[Tensor]:
    size = n if batch_size is None else batch_size
    return [torch.arange(i, min(n, i + size)) for i in range(0, n, size)]


def rows_of(source):
    """``idx -> source outputs of those prompts`` from either form of a source: node outputs of
    every prompt (``ablation_source``) or already such a function (``batch_source``)."""
    return source if callable(source) else (lambda idx: source_rows(source, idx))


def source_rows(source: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    """Source outputs of some prompts (per-position means / zeros have one row for all)."""
    per_prompt = [v for v in source.values() if v.shape[0] != 1]
    if per_prompt and idx.numel() == per_prompt[0].shape[0] and torch.equal(idx.cpu(), torch.arange(idx.numel())):
        return dict(source)  # every prompt, in order: the tensors themselves, not copies
    return {k: v if v.shape[0] == 1 else v[idx.to(v.device)] for k, v in source.items()}


def scores_meta(model, index: GraphIndex, **extra) -> dict:
    return {"n_layers": index.n_layers, "n_heads": index.n_heads, "model": model.cfg.model_name, **extra}


# --- memory budget ----------------------------------------------------------------------------

# Share of the memory available at the call that attribution uses when no ``max_memory`` is given.
DEFAULT_MEMORY_SHARE = 0.5
# Rows (batch x position) of one layer's split q / k / v gradients recomputed at once.
RECOMPUTE_BYTES = 2 ** 26
# EAP-IG runs over one prompt batch whose receiver gradients are contracted together.
RUNS_PER_CONTRACTION = 8


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable`` of /proc/meminfo, psutil elsewhere; 8 GiB
    where neither answers)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return 8 * 2 ** 30


def memory_per_prompt(model, index: GraphIndex, n_pos: int, method: str) -> int:
    """Estimated peak bytes one prompt of ``n_pos`` tokens adds to an attribution run.

    ``method``: ``"eap"``, ``"eap_ig"``, ``"qk_fix"`` or ``"nodes"``. What the forward pass keeps
    for the backward pass with the weights frozen (per layer and token about ``14 d_model +
    4 d_mlp`` values, ``5 d_mlp`` for a gated MLP, and ``3 n_heads n_pos`` attention values;
    logits and their gradient), plus the blocks of sender outputs the method holds
    (``[n_upstream, pos, d_model]`` each: EAP and EAP-IG one, a post-norm EAP-IG run's own
    linearised copy one more, the QK fix three; node attribution its corrupted run's cached
    targets, about one), the receivers' gradients EAP and EAP-IG hold
    until they are contracted, and, for the QK fix, its saved split q / k / v inputs, patterns and
    their gradients, and the attention re-runs of 8 senders at once. The constants are measured
    side by side with ``benchmarks/memory_estimate.py`` (the estimate 1.15-2.3x the measured
    growth per prompt across four families), so a budget is kept without splitting the work into more
    batches than it needs.
    """
    cfg = model.cfg
    elem = torch.finfo(cfg.dtype).bits // 8 if cfg.dtype.is_floating_point else 4
    d, h = cfg.d_model, cfg.n_heads
    d_mlp = 0 if cfg.attn_only else (cfg.d_mlp or 4 * d) * (5 if getattr(cfg, "gated_mlp", False) else 4)
    per_token_layer = 14 * d + d_mlp + 3 * h * n_pos
    per_token = cfg.n_layers * per_token_layer + 4 * cfg.d_vocab_out
    post_norm = any(attn_output_norm(model, layer) is not None for layer in range(index.n_layers))
    blocks = {"eap": 1, "eap_ig": 2 if post_norm else 1, "qk_fix": 3, "nodes": 1}[method]
    per_token += blocks * len(index.upstream) * d  # nodes: the corrupted run's cache of the targets
    if method in ("eap", "eap_ig"):  # the receivers' gradients held until they are contracted (edge._Receivers):
        # q / k / v and the MLP input per layer, and a normalised input per run sharing the contraction
        per_token += cfg.n_layers * d * (4 + (1 if method == "eap" else RUNS_PER_CONTRACTION))
    if method == "qk_fix":
        per_token += cfg.n_layers * (15 * d + d_mlp + 3 * h * d + 4 * h * n_pos) + 8 * 3 * 3 * h * d
    return int(elem * n_pos * per_token)


def memory_budget(max_memory: float | None) -> float:
    """Bytes an attribution run may use: ``max_memory``, by default half the memory available now."""
    if max_memory is not None and (not isinstance(max_memory, (int, float)) or max_memory <= 0):
        raise InputError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    return DEFAULT_MEMORY_SHARE * available_memory() if max_memory is None else float(max_memory)


# Position-resolved score matrices [n_pos, n_slots, n_upstream] a run holds at once (the
# accumulator, its mean and the labelled values).
POSITION_MATRICES = 3


def position_matrix_bytes(index: GraphIndex, n_pos: int) -> int:
    """Bytes of one float32 position-resolved edge matrix ``[n_pos, n_slots, n_upstream]``."""
    return 4 * n_pos * index.shape[0] * index.shape[1]


def check_position_memory(index: GraphIndex, n_pos: int, method: str, budget: float, copies: int = POSITION_MATRICES) -> int:
    """Bytes the position-resolved matrices of a run take (``copies`` of them); ``ValueError``
    before any work when they alone exceed ``budget``, naming the fixes."""
    need = copies * position_matrix_bytes(index, n_pos)
    if need > budget:
        raise InputError(
            f"{method} with by_pos=True holds {copies} matrices of [{n_pos} positions, {index.shape[0]} inputs, "
            f"{index.shape[1]} senders] floats, about {need / 2**30:.3g} GiB, over the memory budget of "
            f"{budget / 2**30:.3g} GiB; use shorter prompts, by_pos=False (scores summed over positions), or a "
            "larger max_memory (bytes)"
        )
    return need


def budget_batch_size(model, index: GraphIndex, task, method: str, batch_size: int | None,
                      max_memory: float | None, by_pos: bool = False) -> int:
    """Prompts per batch: ``batch_size`` (all prompts when None), fewer where the memory budget
    (``max_memory`` bytes; by default half the memory available now) holds fewer. ``ValueError``
    before any work when not even one prompt fits. ``by_pos``: the position-resolved score
    matrices (`check_position_memory`) come out of the budget first."""
    budget = memory_budget(max_memory)
    n_pos = task.clean.shape[1]
    if by_pos:
        budget -= check_position_memory(index, n_pos, method, budget)
    per = memory_per_prompt(model, index, n_pos, method)
    # a reserve for the q / k / v input gradients rebuilt from dM/d hook_q: 8 copies of a chunk of
    # [n_heads, rows, d_model] values, RECOMPUTE_BYTES at most (edge._Receivers now builds them a
    # few dozen rows at a time, well inside it; the reserve is kept as it was)
    cfg = model.cfg
    recompute = 0 if method == "nodes" else 8 * cfg.n_heads * cfg.d_model * n_pos * 4
    cap = 8 * RECOMPUTE_BYTES
    fits = max(int(budget // (per + recompute)), int((budget - cap) // per))
    if fits < 1:
        raise InputError(
            f"{method}: one prompt of {n_pos} tokens needs about {(per + recompute) / 2**30:.3g} GiB on this model "
            f"({cfg.n_layers} layers, d_model {cfg.d_model}, {len(index.upstream)} sender nodes) but the "
            f"memory budget is {budget / 2**30:.3g} GiB; pass a larger max_memory (bytes), use shorter prompts, or "
            "validate a subset of edges with exact_edge_patching(edges=...)"
        )
    n = len(task)
    return max(1, min(n if batch_size is None else batch_size, fits))


@contextmanager
def stream_mode(model) -> Iterator[None]:
    """The flags of a gradient attribution run: q / k / v read one shared ``[batch, pos, d_model]``
    input (no per-head copies kept for the backward pass; each head's input gradient is rebuilt
    from ``dM/d hook_q`` after the backward pass), ``hook_mlp_in`` on, grouped keys and
    values ungrouped (one k / v per query head, as the graph's slots are)."""
    flags = {"use_split_qkv_input": False, "use_hook_mlp_in": True}
    if getattr(model.cfg, "n_key_value_heads", None) is not None:
        flags["ungroup_grouped_query_attention"] = True
    with backend.hook_flags(model, **flags):
        yield
