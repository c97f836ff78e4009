"""Needle accuracy against kept KV-cache share: detected retrieval heads vs random head sets.

`kv_compress_curve` scores every head with one detector (``retrieval``, ``qrhead`` or ``locos``
through `head_scores`) on the needle prompts, then, for each ``k`` (key / value groups), builds a
cache policy around the top-``k`` groups and around ``n_random`` random sets of ``k`` groups (one
seed each), and reads each policy's needle grid (`needle_grid`): accuracy and logit difference
averaged over its cells, and the share of the cache kept.

Policies: ``"razor"`` keeps the chosen groups' full cache and streams the rest (``sink`` +
``window``, ``compensate`` for RazorAttention's compensation token); ``"headkv"`` gives every group
``budget * (1 - share)`` tokens of its own plus the recent ``window`` and splits the pooled rest
(``share * budget`` per group; by default all of it) among the chosen groups
(`HeadBudgetPolicy.from_scores` on an indicator of the set; with ``k = 0`` nobody gets the pool).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pandas as pd
import torch

from circuitkit import names
from circuitkit.errors import InputError
from circuitkit.heads.kv import HeadBudgetPolicy, KVPolicy, needle_grid
from circuitkit.heads.patterns import head_scores
from circuitkit.scores import Scores
from circuitkit.tasks.builders import needle

__all__ = ["DETECTORS", "POLICIES", "kv_compress_curve"]

POLICIES = ("razor", "headkv")
DETECTORS = ("retrieval", "qrhead", "locos", "duo")  # head_scores kinds that rank heads for the cache


def _groups(model) -> list[list[str]]:
    """Each key / value group's query-head ids, layer by layer."""
    n_heads = model.cfg.n_heads
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or n_heads
    group = n_heads // n_kv
    return [[names.head(layer, g * group + i) for i in range(group)]
            for layer in range(model.cfg.n_layers) for g in range(n_kv)]


def _policy(model, kind: str, chosen: Sequence[list[str]], *, sink: int, window: int, compensate: bool,
            budget: int, share: float):
    heads = [h for group in chosen for h in group]
    if kind == "razor":
        return KVPolicy.razor(model, heads, sink, window, compensate)
    if not heads:  # no pool receiver: every group keeps its own part of the budget only
        base = int(round(budget * (1 - share)))
        policy = HeadBudgetPolicy({h: base for group in _groups(model) for h in group}, window)
        policy.check(model)
        return policy
    grid = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for h in heads:
        node = names.parse_node(h)
        grid[node.layer, node.head] = 1.0
    return HeadBudgetPolicy.from_scores(model, Scores.from_head_grid(grid, "chosen"), budget, window, share)


def kv_compress_curve(
    model,
    policy: str = "razor",
    detector: str = "retrieval",
    ks: Sequence[int] | None = None,
    *,
    n_random: int = 3,
    seed: int = 0,
    sink: int = 4,
    window: int = 16,
    compensate: bool = False,
    budget: int = 16,
    share: float = 1.0,
    context_lengths: Sequence[int] = (128,),
    depths: Sequence[float] = (0.0, 0.5, 1.0),
    progress: bool = False,
    **needle_kwargs,
) -> pd.DataFrame:
    """One row per (k, selection, seed): ``selection`` ``"detector"`` (the top-``k`` groups by
    ``detector``'s scores on the needle prompts, seed -1) or ``"random"`` (``n_random`` draws of
    ``k`` groups, seeds ``seed, seed + 1, ...``), with ``heads`` (the chosen ids), ``accuracy``,
    ``logit_diff`` and ``kv_kept`` averaged over the needle grid's cells. ``ks``: numbers of key /
    value groups (default 0, 1, 2, 4, ... up to all). ``needle_kwargs`` go to the `needle` builder.

    Examples:
        >>> import circuitkit as ck
        >>> from circuitkit.heads.compress import kv_compress_curve
        >>> model = ck.load_model("zoo:retrieval-handbuilt")
        >>> params = {k: v for k, v in ck.zoo_card("retrieval-handbuilt").task["params"].items()
        ...           if k in ("values", "haystack", "needle_template", "question")}
        >>> curve = kv_compress_curve(model, "razor", "retrieval", ks=[1], n_random=2, window=16, **params)
        >>> curve[["selection", "heads", "accuracy"]].values.tolist()[0]
        ['detector', 'a1.h0', 1.0]
    """
    if policy not in POLICIES:
        raise InputError(f"unknown policy {policy!r}; choose one of {list(POLICIES)}")
    if detector not in DETECTORS:
        raise InputError(f"unknown detector {detector!r}; choose one of {list(DETECTORS)}")
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
        raise InputError(f"n_random must be a whole number >= 0, got {n_random!r}")
    groups = _groups(model)
    if ks is None:
        ks = sorted({0, *(2 ** i for i in range(len(groups).bit_length()) if 2 ** i <= len(groups)), len(groups)})
    ks = list(ks)
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(groups)]
    if bad:
        raise InputError(f"ks must be whole numbers of key / value groups in [0, {len(groups)}], got {bad}")
    # policy parameters checked before any scoring
    _policy(model, policy, groups[:1], sink=sink, window=window, compensate=compensate, budget=budget, share=share)
    probe = needle(model, context_lengths=context_lengths, depths=depths, **needle_kwargs)
    scores = head_scores(model, probe, detector, progress=progress)
    grid = scores.head_grid(model.cfg.n_layers, model.cfg.n_heads)
    group_score = [float(torch.stack([grid[names.parse_node(h).layer, names.parse_node(h).head] for h in g]).mean())
                   for g in groups]
    order = sorted(range(len(groups)), key=lambda i: (-group_score[i], i))
    rows = []
    for k in ks:
        draws = [("detector", -1, [groups[i] for i in order[:k]])]
        draws += [("random", seed + r, random.Random(seed + r).sample(groups, k)) for r in range(n_random)]
        for selection, draw_seed, chosen in draws:
            kv = _policy(model, policy, chosen, sink=sink, window=window, compensate=compensate, budget=budget,
                         share=share)
            cells = needle_grid(model, kv, context_lengths, depths, **needle_kwargs)
            rows.append({"policy": policy, "detector": detector, "k": k, "selection": selection, "seed": draw_seed,
                         "heads": ",".join(h for g in chosen for h in g), "accuracy": float(cells.accuracy.mean()),
                         "logit_diff": float(cells.logit_diff.mean()), "kv_kept": float(cells.kv_kept.mean())})
    return pd.DataFrame(rows)
