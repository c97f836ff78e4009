"""DuoAttention's learned gates (Xiao et al. 2024, arXiv 2410.10819): which heads need the full
KV cache, found by optimisation rather than read off attention patterns.

Each key / value head (each head without grouped-query attention) gets a gate ``alpha`` in
[0, 1] that mixes its full attention with its streaming attention (the first ``sink`` tokens and
the last ``window``, the query's own included, as `circuitkit.heads.kv.KVPolicy` streams a head):

    out_h = alpha_h * attn_full_h + (1 - alpha_h) * attn_stream_h

The mix is applied to each head's output ``z`` (the per-head attention output before ``W_O``);
as ``z = pattern @ v`` is linear in the pattern it is applied to the pattern
(``hook_pattern``), with the streaming pattern the softmax of the same scores with the evicted
keys masked (exactly what `run_with_kv_policy` computes for a streamed head). The model's weights
stay frozen; only the gates are trained, from ``init`` (DuoAttention: 1), on needle (passkey)
prompts teacher-forced with their answers, to minimise

    loss = mean over answer positions of mean_d (h_full - h_mixed)^2 + sparsity * mean_h |alpha_h|

where ``h`` is the final (normalised) residual stream at each position that predicts an answer
token (DuoAttention distils the last hidden states on the passkey's tokens) and the second term is
the L1 penalty that pushes every gate that the outputs do not need towards streaming. AdamW
(no weight decay) with DuoAttention's schedule (linear warm-up over the first fifth of the steps,
linear decay over the last fifth, never below a tenth of ``lr``); gates are clipped to [0, 1]
before every step. The trained gates, as head `Scores` (a group's query heads share its gate),
rank heads by how much the model needs their full cache: keep the highest in full
(`KVPolicy.razor`), or export them for kvpress (`circuitkit.heads.kvpress.export_kvpress_duo`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit import names
from circuitkit.errors import InputError
from circuitkit.heads.kv import KVPolicy
from circuitkit.heads.retrieval import (
    NeedlePrompt,
    budget_prompts_per_batch,
    check_needle_prompts,
    needle_prompts,
    pad_id,
    prompt_ranges,
)
from circuitkit.models import backend
from circuitkit.scores import Scores
from circuitkit.tasks.task import Task

__all__ = ["duo_gate_hooks", "duo_gates", "run_with_duo_gates"]


def _kv_group(model) -> tuple[int, int]:
    """``(n_kv_heads, group)``: key / value heads per layer and query heads per key / value head."""
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    return n_kv, model.cfg.n_heads // n_kv


def _check_gates(model, gates: Tensor) -> Tensor:
    n_kv, _ = _kv_group(model)
    gates = torch.as_tensor(gates)
    if tuple(gates.shape) != (model.cfg.n_layers, n_kv):
        raise InputError(f"gates must be [n_layers, n_kv_heads] = [{model.cfg.n_layers}, {n_kv}] (one per key / value "
                         f"head), got shape {tuple(gates.shape)}")
    return gates


def _check_stream(sink: int, window: int) -> None:
    for what, value, least in (("sink", sink, 0), ("window", window, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"{what} must be a whole number of tokens >= {least} (the streaming cache keeps the first "
                             f"sink and the last window tokens), got {value!r}")


def duo_gate_hooks(model, gates: Tensor, sink: int = 4, window: int = 16) -> list:
    """Forward hooks that mix each head's full and streaming attention by its gate: ``gates``
    ``[n_layers, n_kv_heads]`` (differentiable; a key / value head's gate applies to all its query
    heads). Two hooks per layer: ``hook_attn_scores`` keeps the scores, ``hook_pattern`` returns
    ``alpha * pattern + (1 - alpha) * streaming pattern``, the streaming pattern being the softmax
    of the scores as an all-streaming `KVPolicy` (``sink``, ``window``) masks them."""
    gates = _check_gates(model, gates)
    _check_stream(sink, window)
    if backend.is_bridge(model):
        backend.require(model, ("pattern",), "DuoAttention gates")
    _, group = _kv_group(model)
    evict = dict(KVPolicy(frozenset(), sink, window).hooks(model))  # every head streamed: one hook per layer
    hooks = []
    for layer in range(model.cfg.n_layers):
        kept: dict[str, Tensor] = {}
        sinks = model.blocks[layer].attn.sinks if getattr(model.cfg, "use_attention_sinks", False) else None
        hooks.append((names.hook("attn_scores", layer), partial(_keep_scores, kept=kept)))
        hooks.append((names.hook("pattern", layer),
                      partial(_mix, kept=kept, alpha=gates[layer], group=group,
                              evict=evict[names.hook("attn_scores", layer)], sinks=sinks)))
    return hooks


def _keep_scores(scores: Tensor, hook, kept: dict) -> Tensor:
    kept["scores"] = scores
    return scores


def _mix(pattern: Tensor, hook, kept: dict, alpha: Tensor, group: int, evict, sinks) -> Tensor:
    streamed = evict(kept.pop("scores"), hook)
    if sinks is not None:  # the learned sink logit joins the softmax, as in the model's own attention
        sink_col = sinks.reshape(1, -1, 1, 1).expand(*streamed.shape[:-1], 1).to(streamed.dtype)
        combined = torch.cat([streamed, sink_col], dim=-1)
        combined = combined - combined.max(dim=-1, keepdim=True).values
        stream = torch.softmax(combined, dim=-1)[..., :-1]
    else:
        stream = torch.softmax(streamed, dim=-1)
    stream = torch.nan_to_num(stream, nan=0.0)
    a = alpha.to(device=pattern.device, dtype=pattern.dtype).repeat_interleave(group)[None, :, None, None]
    return a * pattern + (1 - a) * stream.to(pattern.dtype)


def run_with_duo_gates(model, tokens: Tensor, gates: Tensor, sink: int = 4, window: int = 16) -> Tensor:
    """Logits ``[batch, pos, vocab]`` with every head's attention mixed by its gate (``gates``
    ``[n_layers, n_kv_heads]``): all ones is the model, all zeros every head streaming
    (`run_with_kv_policy` with ``KVPolicy(frozenset(), sink, window)``)."""
    hooks = duo_gate_hooks(model, gates, sink, window)
    with torch.no_grad():
        return model.run_with_hooks(torch.as_tensor(tokens).to(model.cfg.device), fwd_hooks=hooks)


def _final_hook(model) -> str:
    if getattr(model.cfg, "normalization_type", None) is not None and hasattr(model, "ln_final"):
        return "ln_final.hook_normalized"
    return names.hook("resid_post", model.cfg.n_layers - 1)


def _batch(model, prompts: Sequence[NeedlePrompt]) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher-forced tokens ``[b, seq]`` (prompt + answer[:-1], right-padded), the positions
    predicting each answer token ``[b, T]`` and their mask ``[b, T]``."""
    seqs = [torch.cat([p.tokens, p.answer[:-1]]) for p in prompts]
    tokens = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id(model), dtype=torch.long)
    for row, s in enumerate(seqs):
        tokens[row, : len(s)] = s
    steps = max(len(p.answer) for p in prompts)
    t = torch.arange(steps)
    starts = torch.tensor([len(p.tokens) - 1 for p in prompts])
    mask = t[None] < torch.tensor([len(p.answer) for p in prompts])[:, None]
    return tokens, torch.where(mask, starts[:, None] + t[None], starts[:, None]), mask


def _hidden(model, tokens: Tensor, qpos: Tensor, hooks: list) -> Tensor:
    """The final hidden state at ``qpos``: ``[b, T, d_model]``."""
    out: dict[str, Tensor] = {}

    def grab(act, hook):
        out["h"] = act

    model.run_with_hooks(tokens.to(model.cfg.device), return_type=None,
                         fwd_hooks=[*hooks, (_final_hook(model), grab)])
    rows = torch.arange(len(tokens), device=out["h"].device)[:, None]
    return out["h"][rows, qpos.to(out["h"].device)].float()


def _lr_factor(step: int, steps: int) -> float:
    """DuoAttention's schedule: warm up over the first fifth, decay over the last fifth, floor 0.1."""
    fifth = max(1, steps // 5)
    return min(1.0, max((step + 1) / fifth, 0.1), max((steps - step) / fifth, 0.1))


def duo_gates(
    model,
    task_or_prompts: Task | Sequence[NeedlePrompt],
    *,
    steps: int = 100,
    lr: float = 0.02,
    sparsity: float = 0.05,
    sink: int = 4,
    window: int = 16,
    init: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    max_memory: float | None = None,
) -> Scores:
    """Train DuoAttention's gates (see the module docstring) on needle prompts and return them as
    head `Scores` (1: the head needs its full cache; 0: it may stream).

    ``task_or_prompts``: a needle `Task` (`circuitkit.needle`; its prompts should be longer than
    ``sink + window`` so that streaming evicts something) or `NeedlePrompt` objects. ``steps``
    optimiser steps, cycling over batches of ``batch_size`` prompts (shuffled once with ``seed``),
    ``lr`` (DuoAttention: 0.02), ``sparsity`` the L1 weight (DuoAttention's lambda: 0.05),
    ``sink`` / ``window`` the streaming cache, ``init`` the gates' start (DuoAttention: 1).
    ``meta``: the settings, ``gates`` ``[n_layers, n_kv_heads]``, ``distill_loss`` and
    ``sparsity_loss`` per step, and ``per_kv_group`` (True: query heads of a group share a gate).

    Examples:
        >>> import circuitkit as ck
        >>> from circuitkit.heads.gates import duo_gates
        >>> model = ck.load_model("zoo:retrieval-handbuilt")
        >>> task = ck.zoo_task("retrieval-handbuilt", model, context_lengths=[64])
        >>> gates = duo_gates(model, task, steps=40, lr=0.05, sparsity=0.05, window=8, progress=False)
        >>> gates.top(1, by_abs=False)[0][0]  # the one retrieval head keeps its full cache
        'a1.h0'
    """
    prompts = needle_prompts(task_or_prompts)
    check_needle_prompts(model, prompts)
    for what, value in (("steps", steps), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or (what == "steps" and value < 1):
            raise InputError(f"{what} must be a whole number{' >= 1' if what == 'steps' else ''}, got {value!r}")
    for what, value, low in (("lr", lr, 0.0), ("sparsity", sparsity, 0.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low \
                or (what == "lr" and value == 0):
            raise InputError(f"{what} must be a finite number {'> 0' if what == 'lr' else '>= 0'}, got {value!r}")
    if isinstance(init, bool) or not isinstance(init, (int, float)) or not 0.0 <= init <= 1.0:
        raise InputError(f"init must be a gate value in [0, 1] (DuoAttention starts at 1), got {init!r}")
    _check_stream(sink, window)
    shortest = min(len(p.tokens) for p in prompts)
    if shortest <= sink + window:
        raise InputError(f"the prompts (shortest {shortest} tokens) fit in the streaming cache of sink={sink} + "
                         f"window={window} tokens, so streaming changes nothing and the gates learn nothing; use longer "
                         "prompts (context_lengths) or a smaller sink / window")
    if backend.is_bridge(model):
        backend.require(model, ("pattern",), "DuoAttention gates")
    batch_size = budget_prompts_per_batch(model, prompts, batch_size, max_memory)
    n_kv, group = _kv_group(model)
    device = model.cfg.device
    batches = prompt_ranges(len(prompts), batch_size)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(prompts), generator=gen).tolist()
    # fixed batches of shuffled prompts; each batch's full-model hidden states (the distillation
    # targets) computed once, at its first use: the weights are frozen
    cache: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
    gates = torch.nn.Parameter(torch.full((model.cfg.n_layers, n_kv), float(init), device=device))
    optimizer = torch.optim.AdamW([gates], lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, steps))
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    distill_hist, sparse_hist = [], []
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for step in tqdm(range(steps), desc="DuoAttention gates", disable=not progress):
            b = step % len(batches)
            if b not in cache:
                tokens, qpos, mask = _batch(model, [prompts[order[i]] for i in batches[b]])
                with torch.no_grad():
                    cache[b] = (tokens, qpos, mask, _hidden(model, tokens, qpos, []))
            tokens, qpos, mask, target = cache[b]
            with torch.no_grad():
                gates.clamp_(0.0, 1.0)
            mixed = _hidden(model, tokens, qpos, duo_gate_hooks(model, gates, sink, window))
            m = mask.to(mixed.device)
            scale = (target.pow(2).mean(-1) * m).sum() / m.sum()  # the targets' mean square: no units
            distill = ((target - mixed).pow(2).mean(-1) * m).sum() / m.sum() / scale.clamp(min=1e-12)
            sparse = gates.abs().mean()
            loss = distill + sparsity * sparse
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            distill_hist.append(float(distill.detach()))
            sparse_hist.append(float(sparse.detach()))
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    final = gates.detach().clamp(0.0, 1.0).float().cpu()
    grid = final.repeat_interleave(group, dim=1)  # [n_layers, n_heads]
    task_name = task_or_prompts.name if isinstance(task_or_prompts, Task) else "needle"
    meta = {"gates": final, "steps": steps, "lr": lr, "sparsity": sparsity, "sink": sink, "window": window,
            "init": float(init), "seed": seed, "batch_size": batch_size, "n_prompts": len(prompts),
            "distill_loss": distill_hist, "sparsity_loss": sparse_hist, "per_kv_group": group > 1,
            "loss": "MSE of the final hidden state at the answer positions + sparsity * mean |gate|"}
    return Scores.from_head_grid(grid, "duo", task=task_name, meta=meta)
