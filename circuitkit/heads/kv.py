"""From retrieval heads to a smaller KV cache: per-head cache policies simulated exactly inside
attention, and the needle-in-a-haystack grid that measures what they cost.

A `KVPolicy` gives each attention head either the full cache or a streaming one: the first
``sink`` tokens and the last ``window`` before the query (StreamingLLM; RazorAttention keeps the
full cache for retrieval heads only and streams every other head). The policy is applied as a
mask on the attention scores (``hook_attn_scores``, before the softmax), so a streamed head
attends exactly as it would with the other keys evicted; no weight changes. With grouped-query
attention a key / value head is shared by its query heads, so a policy must treat a whole group
alike (the cache is per key / value head).

`needle_grid` scores a model under a policy on needle prompts at each context length and depth:
accuracy (the answer's first token is the top prediction) and the logit difference per cell,
plus the share of the KV cache the policy keeps at that length.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from circuitkit import names
from circuitkit.errors import InputError
from circuitkit.models import backend
from circuitkit.tasks.builders import needle

__all__ = ["KVPolicy", "kv_kept_share", "needle_grid", "run_with_kv_policy"]


@dataclass(frozen=True)
class KVPolicy:
    """Which heads keep the full KV cache (``full``: head ids ``a{L}.h{H}``); every other head
    keeps the first ``sink`` tokens and the last ``window`` (the query's own included)."""

    full: frozenset[str] = field(default_factory=frozenset)
    sink: int = 4
    window: int = 64

    @classmethod
    def razor(cls, model, keep: Iterable[str], sink: int = 4, window: int = 64) -> KVPolicy:
        """RazorAttention's split: the heads in ``keep`` (e.g. `retrieval_heads`) full, every
        other head streaming; checked against ``model`` (and against its key / value groups)."""
        heads = frozenset(names.format_node(n) for n in names.check_model_components(model, list(keep), ("head",),
                                                                                       purpose="kept in full"))
        policy = cls(heads, sink, window)
        policy.check(model)
        return policy

    def check(self, model) -> None:
        if self.sink < 0 or self.window < 1:
            raise InputError(f"a streaming head needs sink >= 0 and window >= 1, got sink={self.sink}, window={self.window}")
        names.check_model_components(model, list(self.full), ("head",), purpose="kept in full")
        n_kv = getattr(model.cfg, "n_key_value_heads", None)
        if n_kv and n_kv < model.cfg.n_heads:
            group = model.cfg.n_heads // n_kv
            for layer in range(model.cfg.n_layers):
                for g in range(n_kv):
                    members = [names.head(layer, g * group + i) for i in range(group)]
                    kept = [m in self.full for m in members]
                    if any(kept) and not all(kept):
                        raise InputError(f"heads {members} share one key / value head, so one KV cache: keep all of "
                                         "them in full or none")

    def streamed(self, model, layer: int) -> Tensor:
        """``[n_heads]`` bool: which heads of ``layer`` stream."""
        return torch.tensor([names.head(layer, h) not in self.full for h in range(model.cfg.n_heads)])


def _keep_mask(n_pos: int, sink: int, window: int, device) -> Tensor:
    """``[query, key]`` bool: key ``k`` is in the streaming cache of query ``q``."""
    q = torch.arange(n_pos, device=device)[:, None]
    k = torch.arange(n_pos, device=device)[None, :]
    return (k < sink) | (q - k < window)


def policy_hooks(model, policy: KVPolicy) -> list:
    """Forward hooks on each layer's ``hook_attn_scores`` that evict, for streamed heads, every key
    outside the sink and the window (their scores set to -inf before the softmax)."""
    policy.check(model)
    if backend.is_bridge(model):
        backend.require(model, ("pattern",), "a KV-cache policy")
    hooks = []
    for layer in range(model.cfg.n_layers):
        streamed = policy.streamed(model, layer)
        if not streamed.any():
            continue

        def evict(scores, hook, streamed=streamed):
            keep = _keep_mask(scores.shape[-1], policy.sink, policy.window, scores.device)
            drop = streamed.to(scores.device)[:, None, None] & ~keep[None]
            return scores.masked_fill(drop[None], float("-inf"))

        hooks.append((names.hook("attn_scores", layer), evict))
    return hooks


def run_with_kv_policy(model, tokens: Tensor, policy: KVPolicy) -> Tensor:
    """Logits ``[batch, pos, vocab]`` with every head attending under ``policy``."""
    hooks = policy_hooks(model, policy)
    with torch.no_grad():
        if backend.is_bridge(model):
            return backend.run_bridge(model, tokens, hooks, None)
        return model.run_with_hooks(tokens, fwd_hooks=hooks)


def kv_kept_share(model, policy: KVPolicy, n_pos: int) -> float:
    """The share of the KV cache kept at the last of ``n_pos`` tokens: full heads keep ``n_pos``
    entries, streamed ones ``min(n_pos, sink + window)``, counted per key / value head."""
    n_heads = model.cfg.n_heads
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or n_heads
    group = n_heads // n_kv
    kept = total = 0
    for layer in range(model.cfg.n_layers):
        for g in range(n_kv):
            full = names.head(layer, g * group) in policy.full
            kept += n_pos if full else min(n_pos, policy.sink + policy.window)
            total += n_pos
    return kept / total


def needle_grid(model, policy: KVPolicy | None = None, context_lengths: Sequence[int] = (64, 128, 256),
                depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), **needle_kwargs) -> pd.DataFrame:
    """Needle accuracy and logit difference per (context length, depth) under ``policy`` (None:
    the full cache), one row per cell, with ``kv_kept`` (`kv_kept_share` at that length).
    ``needle_kwargs`` go to the `needle` builder (values, haystack, template, question).

    Examples:
        >>> import circuitkit as ck
        >>> from circuitkit.heads.kv import KVPolicy, needle_grid
        >>> model = ck.load_model("zoo:retrieval-handbuilt")
        >>> params = {k: v for k, v in ck.zoo_card("retrieval-handbuilt").task["params"].items()
        ...           if k in ("values", "haystack", "needle_template", "question")}
        >>> razor = KVPolicy.razor(model, ["a1.h0"], sink=4, window=16)
        >>> grid = needle_grid(model, razor, context_lengths=(128,), depths=(0.0, 1.0), **params)
        >>> grid[["context_length", "depth", "accuracy"]].values.tolist()
        [[128.0, 0.0, 1.0], [128.0, 1.0, 1.0]]
    """
    if policy is None:  # the full cache: every head keeps it
        policy = KVPolicy(frozenset(names.head(layer, h) for layer in range(model.cfg.n_layers)
                                    for h in range(model.cfg.n_heads)))
    policy.check(model)
    rows = []
    for length in context_lengths:
        for depth in depths:
            task = needle(model, context_lengths=(length,), depths=(depth,), **needle_kwargs)
            logits = run_with_kv_policy(model, task.clean, policy)
            rows_at = torch.arange(len(task))
            last = logits[rows_at, task.answer_pos.reshape(len(task), -1)[:, 0]]
            answers = task.answers.reshape(len(task), -1)[:, 0]
            accuracy = float((last.argmax(-1) == answers.to(last.device)).float().mean())
            rows.append({"context_length": length, "depth": depth, "n_prompts": len(task), "accuracy": accuracy,
                         "logit_diff": float(task.score(logits)), "kv_kept": kv_kept_share(model, policy, length)})
    return pd.DataFrame(rows)
