"""From retrieval heads to a smaller KV cache: per-head cache policies simulated exactly inside
attention, and the needle-in-a-haystack grid that measures what they cost.

A `KVPolicy` gives each attention head either the full cache or a streaming one: the first
``sink`` tokens and the last ``window`` before the query (StreamingLLM; RazorAttention keeps the
full cache for retrieval heads only and streams every other head). The policy is applied as a
mask on the attention scores (``hook_attn_scores``, before the softmax), so a streamed head
attends exactly as it would with the other keys evicted; no weight changes. With grouped-query
attention a key / value head is shared by its query heads, so a policy must treat a whole group
alike (the cache is per key / value head).

``KVPolicy(..., compensate=True)`` adds RazorAttention's compensation token to each streamed
head: the evicted keys and values averaged into one extra entry ``k^ = mean k_m``,
``v^ = mean v_m`` over the evicted set ``D``, weighted by ``|D|`` in the softmax (RazorAttention
eqs. 4-5: ``sum_kept e^{q.k} v + |D| e^{q.k^} v^`` over ``sum_kept e^{q.k} + |D| e^{q.k^}``).
Scores and outputs are linear in the key and the value, so this is done exactly on the scores
alone: each evicted key's score is replaced by the mean of the evicted scores (``q.k^``); each
then gets ``e^{q.k^} / Z`` of the attention and together they carry ``|D| e^{q.k^} v^ / Z``.

A `HeadBudgetPolicy` is HeadKV's per-head budget: each head (each key / value head under
grouped-query attention) keeps its own top-``B`` tokens, ranked by the attention the last
``window`` prompt positions (the observation window, SnapKV-style) pay them, summed over the
group's query heads, plus the recent ``window``.

`needle_grid` scores a model under a policy on needle prompts at each context length and depth:
accuracy (the answer's first token is the top prediction) and the logit difference per cell,
plus the share of the KV cache the policy keeps at that length.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit import names
from circuitkit.attribution.common import memory_budget
from circuitkit.errors import InputError, InputTypeError
from circuitkit.heads.retrieval import forward_memory_per_prompt, prompt_ranges
from circuitkit.models import backend
from circuitkit.models.zoo_store import zoo_card
from circuitkit.tasks.builders import needle

__all__ = ["HeadBudgetPolicy", "KVPolicy", "check_grid_memory", "grid_memory_per_prompt", "kv_kept_share", "needle_defaults",
           "needle_grid", "policy_hooks", "run_with_kv_policy"]


@dataclass(frozen=True)
class KVPolicy:
    """Which heads keep the full KV cache (``full``: head ids ``a{L}.h{H}``); every other head
    keeps the first ``sink`` tokens and the last ``window`` (the query's own included), plus,
    with ``compensate``, RazorAttention's compensation token for the evicted ones.

    Examples:
        >>> import circuitkit as ck
        >>> from circuitkit.heads.kv import KVPolicy, kv_kept_share
        >>> model = ck.load_model("zoo:retrieval-handbuilt")
        >>> razor = KVPolicy.razor(model, ["a1.h0"], sink=4, window=16, compensate=True)
        >>> round(kv_kept_share(model, razor, 128), 4)  # 1 head of 8 full, 7 keep 4 + 16 + 1
        0.2686
    """

    full: frozenset[str] = field(default_factory=frozenset)
    sink: int = 4
    window: int = 64
    compensate: bool = False

    @classmethod
    def razor(cls, model, keep: Iterable[str], sink: int = 4, window: int = 64, compensate: bool = False) -> KVPolicy:
        """RazorAttention's split: the heads in ``keep`` (e.g. `retrieval_heads`) full, every
        other head streaming (``compensate``: with the compensation token); checked against
        ``model`` (and against its key / value groups)."""
        heads = frozenset(names.format_node(n) for n in names.check_model_components(model, list(keep), ("head",),
                                                                                       purpose="kept in full"))
        policy = cls(heads, sink, window, compensate)
        policy.check(model)
        return policy

    def check(self, model) -> None:
        if self.sink < 0 or self.window < 1:
            raise InputError(f"a streaming head needs sink >= 0 and window >= 1, got sink={self.sink}, window={self.window}")
        names.check_model_components(model, list(self.full), ("head",), purpose="kept in full")
        _check_groups(model, lambda head: head in self.full, "keep all of them in full or none")

    def streamed(self, model, layer: int) -> Tensor:
        """``[n_heads]`` bool: which heads of ``layer`` stream."""
        return torch.tensor([names.head(layer, h) not in self.full for h in range(model.cfg.n_heads)])

    def kept(self, layer: int, kv_head: int, n_pos: int, group: int = 1) -> int:
        """Cache entries key / value head ``kv_head`` of ``layer`` holds at ``n_pos`` tokens."""
        if names.head(layer, kv_head * group) in self.full:
            return n_pos
        stream = self.sink + self.window
        return min(n_pos, stream) + int(self.compensate and n_pos > stream)

    def hooks(self, model, ends: Tensor | None = None) -> list:
        """Forward hooks on each layer's ``hook_attn_scores`` (``ends`` is unused: a streaming
        cache is the same at every query). The eviction mask is built once per prompt length and
        shared by every layer and batch; scores are masked in place (no copy of them)."""
        hooks, masks = [], {}
        for layer in range(model.cfg.n_layers):
            streamed = self.streamed(model, layer)
            if streamed.any():
                heads = [int(h) for h in streamed.nonzero().flatten()]
                hooks.append((names.hook("attn_scores", layer), partial(self._evict, heads=heads, masks=masks)))
        return hooks

    def _evict(self, scores: Tensor, hook, heads: list[int], masks: dict) -> Tensor:
        n_q, n_k = scores.shape[-2:]
        drop = _cached(masks, (n_q, n_k, str(scores.device)),
                       lambda: ~_keep_mask(n_k, self.sink, self.window, scores.device)[-n_q:])  # [q, k]
        if not self.compensate:
            if len(heads) == scores.shape[1]:
                scores.masked_fill_(drop, float("-inf"))  # broadcast over batch and heads
            else:
                for h in heads:  # a view per head: no copy of the scores
                    scores[:, h].masked_fill_(drop, float("-inf"))
            return scores
        zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
        for h in heads:  # one head at a time: the temporaries hold one head's scores, not all
            head = scores[:, h]
            # evicted past keys (future keys and padding are -inf already and stay so)
            dropped = drop & torch.isfinite(head)
            mean = torch.where(dropped, head, zero).sum(-1, keepdim=True) / dropped.sum(-1, keepdim=True).clamp(min=1)
            head.masked_fill_(drop, float("-inf"))
            head.copy_(torch.where(dropped, mean.expand_as(head), head))
        return scores


def _cached(cache: dict, key, build):
    """``cache[key]``, built on first use; the cache keeps one entry (one prompt length at a time)."""
    if key not in cache:
        cache.clear()
        cache[key] = build()
    return cache[key]


def _kv_group(model) -> tuple[int, int]:
    """``(n_kv_heads, group)``: key / value heads per layer and query heads per key / value head."""
    n_heads = model.cfg.n_heads
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or n_heads
    return n_kv, n_heads // n_kv


def _check_groups(model, same, fix: str) -> None:
    """Raise when the query heads of one key / value head differ in ``same(head_id)``."""
    n_kv, group = _kv_group(model)
    if group == 1:
        return
    for layer in range(model.cfg.n_layers):
        for g in range(n_kv):
            members = [names.head(layer, g * group + i) for i in range(group)]
            values = [same(m) for m in members]
            if any(v != values[0] for v in values):
                raise InputError(f"heads {members} share one key / value head, so one KV cache: {fix}")


@dataclass(frozen=True)
class HeadBudgetPolicy:
    """HeadKV's per-head cache: head ``h`` in ``budgets`` keeps its top ``budgets[h]`` tokens by
    its own attention score plus the recent ``window``; heads not in ``budgets`` keep the full cache.

    A head's token scores are the attention the observation window (the last ``window`` prompt
    positions, up to each prompt's end) pays each earlier token, read from that layer's scores in
    the same forward pass and summed over the query heads that share a key / value head (they
    share one cache, so they share a budget and one selection). Only tokens before the observation
    window compete for the budget; every query then attends to the selected tokens and to its own
    last ``window`` tokens, as `KVPolicy` does for a streaming head. ``budgets[h] = 0`` is a pure
    sliding window.

    Examples:
        >>> import circuitkit as ck
        >>> from circuitkit.heads.kv import HeadBudgetPolicy, kv_kept_share
        >>> model = ck.load_model("zoo:retrieval-handbuilt")
        >>> scores = ck.retrieval_scores(model, ck.zoo_task("retrieval-handbuilt", model, context_lengths=[64]),
        ...                              progress=False)
        >>> policy = HeadBudgetPolicy.from_scores(model, scores, budget=8, window=8, share=0.5)
        >>> policy.budgets["a1.h0"], policy.budgets["a0.h1"]  # the retrieval head gets the pool
        (36, 4)
        >>> round(kv_kept_share(model, policy, 128), 4)  # 8 heads keep 8 + 8 tokens on average
        0.125
    """

    budgets: Mapping[str, int] = field(default_factory=dict, hash=False)
    window: int = 64

    @classmethod
    def from_scores(cls, model, scores, budget: int, window: int = 64, share: float = 0.5) -> HeadBudgetPolicy:
        """HeadKV's allocation: each key / value head keeps ``budget * (1 - share)`` tokens of its
        own, and the pool of the rest (``share * budget`` per head) goes to the heads in proportion
        to their scores (negative scores count 0; a key / value group's score is its heads' mean;
        largest remainders round the pool exactly)."""
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise InputError(f"budget must be a whole number of tokens >= 0, got {budget!r}")
        if not 0.0 <= share <= 1.0:
            raise InputError(f"share must be in [0, 1] (the part of each head's budget pooled), got {share}")
        n_kv, group = _kv_group(model)
        grid = scores.head_grid(model.cfg.n_layers, model.cfg.n_heads).float().clamp(min=0)
        grid = grid.reshape(model.cfg.n_layers, n_kv, group).mean(-1)  # [layers, kv heads]
        base = int(round(budget * (1 - share)))
        pool = budget * model.cfg.n_layers * n_kv - base * model.cfg.n_layers * n_kv
        weights = grid / grid.sum() if float(grid.sum()) > 0 else torch.full_like(grid, 1 / grid.numel())
        exact = weights.flatten() * pool
        extra = exact.floor().long()
        order = torch.argsort(-(exact - extra), stable=True)[: pool - int(extra.sum())]
        extra[order] += 1
        extra = extra.reshape(grid.shape)
        budgets = {names.head(layer, g * group + i): base + int(extra[layer, g])
                   for layer in range(model.cfg.n_layers) for g in range(n_kv) for i in range(group)}
        policy = cls(budgets, window)
        policy.check(model)
        return policy

    def check(self, model) -> None:
        if self.window < 1:
            raise InputError(f"a head budget policy needs window >= 1, got window={self.window}")
        bad = {h: b for h, b in self.budgets.items() if isinstance(b, bool) or not isinstance(b, int) or b < 0}
        if bad:
            raise InputError(f"budgets must be whole numbers of tokens >= 0, got {bad}")
        names.check_model_components(model, list(self.budgets), ("head",), purpose="given a token budget")
        _check_groups(model, lambda head: self.budgets.get(head), "give them one budget (or none)")

    def kept(self, layer: int, kv_head: int, n_pos: int, group: int = 1) -> int:
        budget = self.budgets.get(names.head(layer, kv_head * group))
        return n_pos if budget is None else min(n_pos, budget + self.window)

    def hooks(self, model, ends: Tensor | None = None) -> list:
        """Forward hooks on each layer's ``hook_attn_scores``; ``ends`` ``[batch]`` is each prompt's
        last position (default: the last position), where its observation window ends."""
        n_kv, group = _kv_group(model)
        hooks = []
        for layer in range(model.cfg.n_layers):
            budgets = [self.budgets.get(names.head(layer, h)) for h in range(model.cfg.n_heads)]
            if all(b is None for b in budgets):
                continue
            hooks.append((names.hook("attn_scores", layer),
                          partial(self._select, budgets=budgets, group=group, ends=ends)))
        return hooks

    def _select(self, scores: Tensor, hook, budgets: list, group: int, ends: Tensor | None) -> Tensor:
        batch, n_heads, n_q, n_k = scores.shape
        device = scores.device
        ends_ = (torch.full((batch,), n_k - 1) if ends is None else torch.as_tensor(ends).reshape(-1)).to(device)
        if ends_.shape[0] != batch:
            raise InputError(f"ends has {ends_.shape[0]} entries for a batch of {batch} prompts")
        start = (ends_ - self.window + 1).clamp(min=0)  # first observation query per row
        offset = n_k - n_q  # key position of query row 0
        # only the rows some prompt observes are read (softmax of [batch, heads, rows, keys], not of every row)
        lo = max(0, int(start.min()) - offset)
        hi = min(n_q, int(ends_.max()) - offset + 1)
        q = torch.arange(lo, max(lo, hi), device=device) + offset
        k = torch.arange(n_k, device=device)
        observing = (q[None] >= start[:, None]) & (q[None] <= ends_[:, None])  # [b, rows]
        pattern = torch.softmax(scores[:, :, lo:max(lo, hi)].float(), dim=-1).nan_to_num(0.0)
        importance = torch.einsum("bhqk,bq->bhk", pattern, observing.float())  # [b, heads, k]
        del pattern
        importance = importance.reshape(batch, n_heads // group, group, n_k).sum(2)  # per key / value head
        candidate = k[None] < start[:, None]  # [b, k]
        ranked = importance.masked_fill(~candidate[:, None], float("-inf"))
        order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(-1, order, torch.arange(n_k, device=device).expand_as(order))
        budget = torch.tensor([b if b is not None else n_k for b in budgets], device=device)
        budget = budget.reshape(-1, group)[:, 0]  # one budget per key / value head (checked)
        selected = (rank < budget[None, :, None]) & candidate[:, None]  # [b, kv heads, k]
        recent = (torch.arange(n_q, device=device)[:, None] + offset - k[None]) < self.window  # [q, k]
        for h, b in enumerate(budgets):  # a view per budgeted head, masked in place
            if b is not None:
                scores[:, h].masked_fill_(~(selected[:, h // group, None, :] | recent[None]), float("-inf"))
        return scores


def _keep_mask(n_pos: int, sink: int, window: int, device) -> Tensor:
    """``[query, key]`` bool: key ``k`` is in the streaming cache of query ``q``."""
    q = torch.arange(n_pos, device=device)[:, None]
    k = torch.arange(n_pos, device=device)[None, :]
    return (k < sink) | (q - k < window)


Policy = KVPolicy | HeadBudgetPolicy


def _check_policy(model, policy) -> None:
    if not isinstance(policy, (KVPolicy, HeadBudgetPolicy)):
        raise InputTypeError(f"policy must be a KVPolicy or a HeadBudgetPolicy, got {type(policy).__name__}")
    policy.check(model)


def policy_hooks(model, policy: Policy, ends: Tensor | None = None) -> list:
    """Forward hooks on each layer's ``hook_attn_scores`` that apply ``policy`` before the softmax:
    a streamed head's evicted keys get -inf (or, with ``compensate``, the compensation token's
    score), a budgeted head's unselected keys -inf. ``ends``: each prompt's last position
    (`HeadBudgetPolicy` only)."""
    _check_policy(model, policy)
    if backend.is_bridge(model):
        backend.require(model, ("pattern",), "a KV-cache policy")
    return policy.hooks(model, ends)


def run_with_kv_policy(model, tokens: Tensor, policy: Policy, ends: Tensor | None = None) -> Tensor:
    """Logits ``[batch, pos, vocab]`` with every head attending under ``policy`` (``ends``: each
    prompt's last position, where a `HeadBudgetPolicy`'s observation window ends)."""
    hooks = policy_hooks(model, policy, ends)
    with torch.no_grad():
        if backend.is_bridge(model):
            return backend.run_bridge(model, tokens, hooks, None)
        return model.run_with_hooks(tokens, fwd_hooks=hooks)


def kv_kept_share(model, policy: Policy, n_pos: int) -> float:
    """The share of the KV cache kept at the last of ``n_pos`` tokens, counted per key / value
    head: full heads keep ``n_pos`` entries, streamed ones ``min(n_pos, sink + window)`` (plus
    one compensation token when some were evicted), budgeted ones ``min(n_pos, budget + window)``."""
    n_kv, group = _kv_group(model)
    kept = sum(policy.kept(layer, g, n_pos, group) for layer in range(model.cfg.n_layers) for g in range(n_kv))
    return kept / (n_pos * n_kv * model.cfg.n_layers)


def needle_defaults(model) -> dict:
    """The needle parameters (values, haystack, needle template, question) of a zoo model built or
    trained on needle prompts, read from its card when ``model`` is that zoo model; else ``{}``."""
    try:
        card = zoo_card(str(model.cfg.model_name))
    except (KeyError, ValueError, OSError):
        return {}
    same = all(card.config.get(k) == getattr(model.cfg, k, None) for k in ("n_layers", "n_heads", "d_model", "d_vocab"))
    if not same or card.task.get("builder") != "needle":
        return {}
    return {k: v for k, v in card.task.get("params", {}).items()
            if k in ("values", "haystack", "needle_template", "question")}


def grid_memory_per_prompt(model, n_pos: int) -> tuple[int, int]:
    """``(bytes, score bytes)``: the estimated peak one prompt of ``n_pos`` tokens adds to a needle
    grid's forward pass (`forward_memory_per_prompt`: one layer's attention scores, mask and
    pattern, and activations) and the bytes of one layer's attention scores alone
    (``n_heads x n_pos^2`` values)."""
    cfg = model.cfg
    elem = torch.finfo(cfg.dtype).bits // 8 if cfg.dtype.is_floating_point else 4
    return forward_memory_per_prompt(model, n_pos), elem * cfg.n_heads * n_pos * n_pos


def check_grid_memory(model, context_lengths: Sequence[int], max_memory: float | None) -> float:
    """The memory budget (bytes; `memory_budget`: ``max_memory`` or half the memory available);
    ``ValueError`` before any work when one prompt of the longest length does not fit in it,
    naming the bytes one layer's attention needs, the budget and the fix."""
    budget = memory_budget(max_memory)
    n_pos = max(context_lengths)
    need, scores = grid_memory_per_prompt(model, n_pos)
    if need > budget:
        fits = [n for n in range(1, n_pos) if grid_memory_per_prompt(model, n)[0] <= budget]
        shorter = f"context lengths <= {max(fits)}" if fits else "a smaller model"
        raise InputError(
            f"needle_grid: one prompt of {n_pos} tokens needs about {_size(need)} ({need:,} bytes) in one layer: "
            f"{model.cfg.n_heads} heads x {n_pos}^2 attention scores are {_size(scores)}, held with their mask and "
            f"pattern and the activations; the memory budget max_memory is {_size(budget)} ({int(budget):,} bytes); "
            f"pass max_memory >= {need:,} (bytes) or use {shorter}"
        )
    return budget


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def _answer_logits(model, tokens: Tensor, pos: Tensor, hooks: list) -> Tensor:
    """Logits ``[batch, vocab]`` at each prompt's ``pos`` under ``hooks``. A HookedTransformer
    unembeds those positions only (the residual is cut to them after the last block, so the final
    norm and unembedding run as the model's own code on one position per prompt)."""
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    with torch.no_grad():
        if backend.is_bridge(model):
            return backend.run_bridge(model, tokens, hooks, None)[rows, pos.to(tokens.device)].float()

        def cut(resid, hook):
            return resid[rows.to(resid.device), pos.to(resid.device)][:, None]

        last = names.hook("resid_post", model.cfg.n_layers - 1)
        return model.run_with_hooks(tokens, fwd_hooks=[*hooks, (last, cut)])[:, 0].float()


def needle_grid(model, policy: Policy | None = None, context_lengths: Sequence[int] = (64, 128, 256),
                depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), *, n_needles: int = 1,
                keys: Sequence[str] | None = None, paraphrase: str | None = None, haystack=None,
                batch_size: int = 16, max_memory: float | None = None, progress: bool = False,
                **needle_kwargs) -> pd.DataFrame:
    """Needle accuracy and logit difference per (context length, depth) under ``policy`` (None:
    the full cache), one row per cell, with ``kv_kept`` (`kv_kept_share` at that length).

    The prompts are the `needle` builder's (``needle_kwargs``: values, needle_template, question,
    distractor_template, prepend_bos; a zoo needle model's own by default, `needle_defaults`):

    * ``haystack``: text, a list of texts, or token ids (a list, a 1-D tensor, or a list of
      documents); default the zoo model's haystack, else the bundled corpus;
    * ``n_needles``: needles per prompt, the asked one at the cell's depth, the others spread
      evenly after it, worded as ``distractor_template`` (another "code");
    * ``keys`` (RULER's multi-key): one needle per key, each "the {KEY} code is {VALUE}", the
      question asking one key; the answer is that key's value;
    * ``paraphrase``: the needle's wording when the question words it differently (a template
      with ``{VALUE}``, and ``{KEY}`` with keys).

    A prompt is correct when the answer's first token is the top prediction at the question's end;
    ``logit_diff`` is that token's logit minus the next value's (the first distractor's). Cost: one
    forward pass per batch of prompts of one length, the policy's masks built once per length and
    applied in place on the attention scores, logits unembedded at the answer position only; no
    cache is kept. Batches hold ``batch_size`` prompts, fewer where ``max_memory`` (bytes; default
    half the memory available) holds fewer, and ``ValueError`` before any work, with the numbers,
    when one prompt's layer does not fit (`check_grid_memory`).

    Columns: ``context_length``, ``depth``, ``n_prompts``, ``accuracy``, ``logit_diff``,
    ``kv_kept``, ``n_needles``, ``n_keys`` (0 without keys) and ``needle`` ("literal" or
    "paraphrase").

    Examples:
        >>> import circuitkit as ck
        >>> from circuitkit.heads.kv import KVPolicy, needle_grid
        >>> model = ck.load_model("zoo:retrieval-handbuilt")  # its card's values and haystack by default
        >>> razor = KVPolicy.razor(model, ["a1.h0"], sink=4, window=16)
        >>> grid = needle_grid(model, razor, context_lengths=(128,), depths=(0.0, 1.0))
        >>> grid[["context_length", "depth", "accuracy"]].values.tolist()
        [[128.0, 0.0, 1.0], [128.0, 1.0, 1.0]]
        >>> keyed = needle_grid(model, None, (128,), (0.5,), keys=("river", "stone"))  # RULER multi-key
        >>> keyed[["n_needles", "n_keys", "accuracy"]].values.tolist()  # its copy head reads no key
        [[2.0, 2.0, 0.0]]
    """
    if policy is None:  # the full cache: every head keeps it
        policy = KVPolicy(frozenset(names.head(layer, h) for layer in range(model.cfg.n_layers)
                                    for h in range(model.cfg.n_heads)))
    _check_policy(model, policy)
    lengths = list(context_lengths)
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise InputError(f"context_lengths must be whole numbers of tokens >= 1, got {context_lengths!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    too_long = [n for n in lengths if n > model.cfg.n_ctx]
    if too_long:
        raise InputError(f"context lengths {too_long} exceed model {model.cfg.model_name!r}'s n_ctx={model.cfg.n_ctx}")
    budget = check_grid_memory(model, lengths, max_memory)  # before any prompt is built or run
    params = {**needle_defaults(model), **needle_kwargs}
    if haystack is not None:
        params["haystack"] = haystack
    tasks = {n: needle(model, context_lengths=(n,), depths=tuple(depths), n_needles=n_needles, keys=keys,
                       paraphrase=paraphrase, **params) for n in dict.fromkeys(lengths)}
    hooks = policy_hooks(model, policy)  # every prompt of a length ends at its last position
    device = model.cfg.device
    rows = []
    for n, task in tqdm(tasks.items(), desc="needle grid", disable=not progress):
        per_batch = max(1, min(batch_size, int(budget // grid_memory_per_prompt(model, n)[0])))
        correct, diff = torch.zeros(len(task), dtype=torch.bool), torch.zeros(len(task))
        answers, wrong = task.answers[:, 0], task.wrong_answers[:, 0]
        for batch in prompt_ranges(len(task), per_batch):
            idx = torch.tensor(list(batch))
            logits = _answer_logits(model, task.clean[idx].to(device), task.answer_pos[idx], hooks).cpu()
            rows_at = torch.arange(len(idx))
            correct[idx] = logits.argmax(-1) == answers[idx]
            diff[idx] = logits[rows_at, answers[idx]] - logits[rows_at, wrong[idx]]
        asked = torch.tensor([needles[0]["depth"] for needles in task.meta["needles"]])
        for depth in depths:
            at = asked == depth
            rows.append({"context_length": n, "depth": depth, "n_prompts": int(at.sum()),
                         "accuracy": float(correct[at].float().mean()) if at.any() else float("nan"),
                         "logit_diff": float(diff[at].mean()) if at.any() else float("nan"),
                         "kv_kept": kv_kept_share(model, policy, n),
                         "n_needles": len(task.meta["needles"][0]), "n_keys": 0 if keys is None else len(task.meta["needles"][0]),
                         "needle": "literal" if paraphrase is None else "paraphrase"})
    return pd.DataFrame(rows)
