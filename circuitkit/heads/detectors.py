"""Two more retrieval-head detectors on needle prompts, beside Wu et al.'s copy score
(`circuitkit.heads.retrieval`):

* **QRHead** (Zhang et al. 2025, "query-focused retrieval heads"): a head's score is the
  attention mass its query tokens put on the document span that holds the answer, here the
  mean over the query's positions of the attention on the needle value's tokens, averaged over
  prompts. The query is the prompt's last ``query_len`` tokens (by default the longest token
  suffix every prompt shares, cut to what follows each needle: the question).
* **LOCOS** (Gema et al. 2026, logit-contribution scoring, for non-literal retrieval heads):
  scores what a head *writes*, not where it looks. At answer step ``t`` (teacher forcing, as
  `retrieval_scores`) the head's write from source position ``j`` projected on the answer
  token's unembedding is ``phi_j = a_{ij} (v_j W_O) . u_y`` (through the final norm: its weight,
  its centring for LayerNorm and its scale at the query, so that ``sum_j phi_j`` is the head's
  direct logit attribution to the answer token). The spatial contrast is the mean of ``phi`` over
  the needle span minus its mean over the other positions the query sees; a trial's score is
  its mean over answer steps, and the head's score the mean over trials the model answers
  mostly right (ROUGE-1 recall above ``min_recall``, as Wu et al.).

With grouped-query attention, ``per_kv_group=True`` gives each query head its key / value
group's mean score (a KV cache is kept or evicted per group).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit.errors import InputError
from circuitkit.heads.retrieval import (
    MIN_RECALL,
    NeedlePrompt,
    budget_prompts_per_batch,
    check_needle_prompts,
    needle_prompts,
    pad_id,
    prompt_ranges,
    rouge1_recall,
    teacher_forced_batch,
)
from circuitkit.scores import Scores
from circuitkit.tasks.task import Task

__all__ = ["kv_group_mean", "locos_scores", "qr_scores"]


def kv_group_mean(model, grid: Tensor) -> Tensor:
    """``grid`` ``[..., n_layers, n_heads]`` with each head's value replaced by its key / value
    group's mean (unchanged without grouped-query attention)."""
    n_heads = model.cfg.n_heads
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or n_heads
    group = n_heads // n_kv
    if group == 1:
        return grid
    shape = grid.shape
    means = grid.reshape(*shape[:-1], n_kv, group).mean(-1, keepdim=True)
    return means.expand(*shape[:-1], n_kv, group).reshape(shape)


def _query_len(prompts: Sequence[NeedlePrompt], query_len: int | None) -> int:
    room = min(len(p.tokens) - p.needle_end for p in prompts)  # tokens after each needle
    if query_len is not None:
        if isinstance(query_len, bool) or not isinstance(query_len, int) or query_len < 1:
            raise InputError(f"query_len must be a whole number of tokens >= 1, got {query_len!r}")
        if query_len > room:
            raise InputError(f"query_len={query_len} reaches into a needle (only {room} tokens follow the latest "
                             "needle); use a smaller query_len")
        return query_len
    common = 0
    while common < room and len({int(p.tokens[-1 - common]) for p in prompts}) == 1:
        common += 1
    if common == 0:
        raise InputError("the prompts share no final tokens, so no query span can be inferred; pass query_len "
                         "(the number of trailing prompt tokens that form the question)")
    return common


def _finish_grid(model, per_prompt: Tensor, kept: Tensor, per_kv_group: bool, method: str, source, meta: dict) -> Scores:
    grid = per_prompt[kept].mean(0)
    if per_kv_group:
        grid = kv_group_mean(model, grid)
    task_name = source.name if isinstance(source, Task) else "needle"
    return Scores.from_head_grid(grid, method, task=task_name,
                                 meta={"per_prompt": per_prompt, "per_kv_group": per_kv_group, **meta})


def qr_scores(
    model,
    task_or_prompts: Task | Sequence[NeedlePrompt],
    *,
    query_len: int | None = None,
    per_kv_group: bool = False,
    batch_size: int = 16,
    progress: bool = False,
    max_memory: float | None = None,
) -> Scores:
    """QRHead's query-focused retrieval score of every head (see the module docstring): mean over
    the query's positions of the attention mass on the needle span, averaged over prompts.

    ``task_or_prompts``: a needle `Task` (`circuitkit.needle`) or `NeedlePrompt` objects;
    ``query_len``: trailing prompt tokens that form the query (None: inferred). Returns head
    ``Scores`` with ``meta``: ``per_prompt`` ``[n, L, H]``, ``query_len``, ``per_kv_group``.

    Examples:
        >>> import circuitkit as ck
        >>> from circuitkit.heads import qr_scores
        >>> model = ck.load_model("zoo:retrieval-handbuilt")
        >>> scores = qr_scores(model, ck.zoo_task("retrieval-handbuilt", model, context_lengths=[64]))
        >>> scores.top(1, by_abs=False)[0][0], scores.meta["query_len"]  # the question: 10 tokens
        ('a1.h0', 10)
    """
    prompts = needle_prompts(task_or_prompts)
    check_needle_prompts(model, prompts)
    n_query = _query_len(prompts, query_len)
    batch_size = budget_prompts_per_batch(model, prompts, batch_size, max_memory)
    per_prompt = torch.zeros(len(prompts), model.cfg.n_layers, model.cfg.n_heads)
    for batch in tqdm(prompt_ranges(len(prompts), batch_size), desc="QRHead scores", disable=not progress):
        chunk = [prompts[i] for i in batch]
        width = max(len(p.tokens) for p in chunk)
        tokens = torch.full((len(chunk), width), pad_id(model), dtype=torch.long)
        span = torch.zeros(len(chunk), width, dtype=torch.bool)  # needle positions
        query = torch.zeros(len(chunk), width, dtype=torch.bool)  # query positions
        for row, p in enumerate(chunk):
            tokens[row, : len(p.tokens)] = p.tokens
            span[row, p.needle_start: p.needle_end] = True
            query[row, len(p.tokens) - n_query: len(p.tokens)] = True

        def mass(pattern, hook, rows=tuple(batch), span=span, query=query):
            on_span = (pattern * span.to(pattern.device)[:, None, None, :]).sum(-1)  # [b, H, q]
            weights = query.to(pattern.device)[:, None, :].float()
            per_prompt[list(rows), hook.layer()] = ((on_span * weights).sum(-1) / n_query).float().cpu()

        with torch.no_grad():
            model.run_with_hooks(tokens.to(model.cfg.device),
                                 fwd_hooks=[(lambda name: name.endswith("attn.hook_pattern"), mass)])
    kept = torch.ones(len(prompts), dtype=torch.bool)
    return _finish_grid(model, per_prompt, kept, per_kv_group, "qrhead", task_or_prompts,
                        {"query_len": n_query, "n_prompts": len(prompts)})


def _answer_direction(model, answers: Tensor) -> Tensor:
    """``[..., d_model]``: the residual direction whose dot with the final norm's input, divided by
    the norm's scale, is the answer token's logit (``W_U[:, y]`` times the norm's weight, centred
    for LayerNorm)."""
    u = model.W_U[:, answers.to(model.W_U.device)].movedim(0, -1).float()  # [..., d_model]
    norm = getattr(model.cfg, "normalization_type", None)
    weight = getattr(getattr(model, "ln_final", None), "w", None)
    if norm is not None and weight is not None:
        u = u * weight.float()
    if norm in ("LN", "LNPre"):
        u = u - u.mean(-1, keepdim=True)
    return u


def locos_scores(
    model,
    task_or_prompts: Task | Sequence[NeedlePrompt],
    *,
    min_recall: float = MIN_RECALL,
    per_kv_group: bool = False,
    batch_size: int = 16,
    progress: bool = False,
    max_memory: float | None = None,
) -> Scores:
    """LOCOS logit-contribution score of every head (see the module docstring), by teacher
    forcing: one forward pass per batch reads, at each answer step, each head's pattern row, the
    layer's values and the final norm's scale.

    Returns head ``Scores`` with ``meta``: ``per_prompt`` ``[n, L, H]`` trial scores, ``dla``
    ``[n, T, L, H]`` each head's whole direct logit attribution to the answer token per answer
    step (``sum_j phi_j``; 0 past a trial's answer), ``recall``, ``kept``, ``n_kept``.

    Examples:
        >>> import circuitkit as ck
        >>> from circuitkit.heads import locos_scores
        >>> model = ck.load_model("zoo:retrieval-handbuilt")
        >>> scores = locos_scores(model, ck.zoo_task("retrieval-handbuilt", model, context_lengths=[64]))
        >>> scores.top(1, by_abs=False)[0][0], scores.meta["n_kept"]
        ('a1.h0', 18)
    """
    prompts = needle_prompts(task_or_prompts)
    check_needle_prompts(model, prompts)
    batch_size = budget_prompts_per_batch(model, prompts, batch_size, max_memory)
    cfg = model.cfg
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    steps = max(len(p.answer) for p in prompts)
    per_prompt = torch.zeros(len(prompts), n_layers, n_heads)
    dla = torch.zeros(len(prompts), steps, n_layers, n_heads)
    recall = torch.zeros(len(prompts))
    for batch in tqdm(prompt_ranges(len(prompts), batch_size), desc="LOCOS scores", disable=not progress):
        chunk = [prompts[i] for i in batch]
        saved: dict[str, Tensor] = {}

        def keep_rows(pattern, hook, qpos, saved=saved):
            rows = torch.arange(pattern.shape[0], device=pattern.device)[:, None]
            saved[f"pattern{hook.layer()}"] = pattern[rows, :, qpos.to(pattern.device)].float()  # [b, T, H, k]

        def keep_values(v, hook, qpos, saved=saved):
            saved[f"v{hook.layer()}"] = v.float()

        def keep_scale(scale, hook, qpos, saved=saved):
            rows = torch.arange(scale.shape[0], device=scale.device)[:, None]
            saved["scale"] = scale[rows, qpos.to(scale.device)].float()  # [b, T, 1]

        hooks = [(lambda n: n.endswith("attn.hook_pattern"), keep_rows),
                 (lambda n: n.endswith("attn.hook_v"), keep_values)]
        if cfg.normalization_type is not None:
            hooks.append(("ln_final.hook_scale", keep_scale))
        tokens, qpos, mask, logits = teacher_forced_batch(model, chunk, hooks)
        produced = logits.argmax(-1)
        answers = torch.zeros(len(chunk), qpos.shape[1], dtype=torch.long)
        for row, p in enumerate(chunk):
            answers[row, : len(p.answer)] = p.answer
            recall[batch[row]] = rouge1_recall(produced[row, : len(p.answer)].tolist(), p.answer.tolist())
        u = _answer_direction(model, answers)  # [b, T, d_model]
        scale = saved.get("scale")
        width = tokens.shape[1]
        k = torch.arange(width)
        span = torch.zeros(len(chunk), width, dtype=torch.bool)
        for row, p in enumerate(chunk):
            span[row, p.needle_start: p.needle_end] = True
        seen = k[None, None] <= qpos[:, :, None]  # [b, T, k]
        on = (span[:, None] & seen).float()
        off = (~span[:, None] & seen).float()
        for layer in range(n_layers):
            v = saved[f"v{layer}"]  # [b, k, H or n_kv, d_head]
            if v.shape[2] != n_heads:
                v = v.repeat_interleave(n_heads // v.shape[2], dim=2)
            w = torch.einsum("hdm,btm->bthd", model.W_O[layer].float(), u.to(v.device))  # W_O u per head
            phi = saved[f"pattern{layer}"] * torch.einsum("bkhd,bthd->bthk", v, w)  # [b, T, H, k]
            if scale is not None:
                phi = phi / scale[:, :, :, None].to(phi.device)
            phi = phi.cpu()
            dla[list(batch), : qpos.shape[1], layer] = phi.sum(-1) * mask[:, :, None]
            contrast = ((phi * on[:, :, None]).sum(-1) / on.sum(-1).clamp(min=1)[:, :, None]
                        - (phi * off[:, :, None]).sum(-1) / off.sum(-1).clamp(min=1)[:, :, None])  # [b, T, H]
            n_steps = mask.sum(1).clamp(min=1).float()[:, None]
            per_prompt[list(batch), layer] = (contrast * mask[:, :, None]).sum(1) / n_steps
    kept = recall > min_recall
    if not bool(kept.any()):
        raise InputError(
            f"model {cfg.model_name!r} answers none of the {len(prompts)} needle prompts mostly right (ROUGE-1 "
            f"recall of the answer > {min_recall}; best {float(recall.max()):.2f}); LOCOS scores trials the model "
            "solves: use shorter contexts, a model that solves the task, or a lower min_recall"
        )
    return _finish_grid(model, per_prompt, kept, per_kv_group, "locos", task_or_prompts,
                        {"dla": dla, "recall": recall, "kept": kept, "n_kept": int(kept.sum()),
                         "min_recall": min_recall})

