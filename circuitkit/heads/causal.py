"""Causal check of retrieval heads: ablate the top-k heads vs k random non-retrieval heads.

Ablation follows Wu et al.: the head's attention is made uniform over the context it may see
(query ``i`` attends ``1 / (i + 1)`` to every position ``<= i``), by a forward hook on
``blocks.L.attn.hook_pattern`` — the head still runs, but can no longer pick out the needle.
Needle accuracy is read with teacher forcing on prompt + answer: ``"full"`` counts a prompt right
when every answer token is the argmax prediction, ``"first"`` only the first answer token.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit import names
from circuitkit.errors import InputError
from circuitkit.heads.retrieval import (
    RETRIEVAL_THRESHOLD,
    NeedlePrompt,
    check_needle_prompts,
    needle_prompts,
    teacher_forced_batch,
)
from circuitkit.models import backend
from circuitkit.scores import Scores
from circuitkit.tasks.task import Task


def uniform_attention_hooks(model, heads: Iterable[str]) -> list[tuple[str, object]]:
    """Forward hooks that make ``heads``' attention uniform over each query's causal context."""
    backend.require(model, ("pattern",), "flattening heads' attention (the retrieval causal check)")
    by_layer: dict[int, list[int]] = {}
    for node in names.check_model_components(model, heads):
        if node.kind != "head":
            raise InputError(f"only attention heads can get uniform attention, not {names.format_node(node)!r}")
        by_layer.setdefault(node.layer, []).append(node.head)
    hooks = []
    for layer, head_list in sorted(by_layer.items()):
        idx = torch.tensor(sorted(set(head_list)))

        def uniform(pattern, hook, idx=idx):
            q, k = pattern.shape[-2:]
            causal = torch.tril(torch.ones(q, k, device=pattern.device, dtype=pattern.dtype))
            pattern = pattern.clone()
            pattern[:, idx.to(pattern.device)] = causal / causal.sum(-1, keepdim=True)
            return pattern

        hooks.append((names.hook("pattern", layer), uniform))
    return hooks


def needle_accuracy(model, task_or_prompts: Task | Sequence[NeedlePrompt], ablate: Iterable[str] = (),
                    accuracy: str = "full", batch_size: int = 16) -> tuple[float, Tensor]:
    """Share of needle prompts answered right (teacher forcing) with ``ablate``'s attention uniform.

    Returns the accuracy and the per-prompt correctness ``[n]`` (bool).
    """
    if accuracy not in ("full", "first"):
        raise InputError(f"accuracy must be 'full' (every answer token) or 'first' (first token), got {accuracy!r}")
    prompts = needle_prompts(task_or_prompts)
    check_needle_prompts(model, prompts)
    hooks = uniform_attention_hooks(model, list(ablate))
    correct = torch.zeros(len(prompts), dtype=torch.bool)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start: start + batch_size]
        # teacher_forced_batch passes the query positions to hooks; uniform attention ignores them
        fwd = [(name, lambda act, hook, qpos, fn=fn: fn(act, hook)) for name, fn in hooks]
        _, _, mask, logits = teacher_forced_batch(model, chunk, fwd)
        produced = logits.argmax(-1)
        for row, p in enumerate(chunk):
            n = len(p.answer) if accuracy == "full" else 1
            correct[start + row] = bool((produced[row, :n] == p.answer[:n]).all())
    return float(correct.float().mean()), correct


@dataclass
class CausalCheck:
    """Needle accuracy of the full model, with the top-k heads ablated, and with k random
    non-retrieval heads ablated (one entry per draw)."""

    k: int
    top_heads: list[str]
    random_heads: list[list[str]]
    full_accuracy: float
    top_accuracy: float
    random_accuracies: list[float]
    accuracy: str = "full"
    ablation: str = "uniform-attention"
    meta: dict = field(default_factory=dict)

    @property
    def mean_random_accuracy(self) -> float:
        return sum(self.random_accuracies) / len(self.random_accuracies)

    @property
    def gap(self) -> float:
        """Mean random-ablation accuracy minus top-k-ablation accuracy (large = the top heads matter)."""
        return self.mean_random_accuracy - self.top_accuracy

    def to_frame(self):
        """One row per condition: ``full``, ``top-k``, ``random-1`` ..., ``random-mean``."""
        import pandas as pd

        rows = [{"condition": "full", "heads": "", "accuracy": self.full_accuracy},
                {"condition": f"top-{self.k}", "heads": ",".join(self.top_heads), "accuracy": self.top_accuracy}]
        rows += [{"condition": f"random-{i + 1}", "heads": ",".join(h), "accuracy": a}
                 for i, (h, a) in enumerate(zip(self.random_heads, self.random_accuracies, strict=True))]
        rows.append({"condition": "random-mean", "heads": "", "accuracy": self.mean_random_accuracy})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """What the table shows, in words (the gap, and draws that had to repeat)."""
        distinct = len({tuple(h) for h in self.random_heads})
        text = (f"gap {self.gap:+.3f} = random-mean accuracy {self.mean_random_accuracy:.3f} - top-{self.k} accuracy "
                f"{self.top_accuracy:.3f}: how much more needle accuracy ablating the top {self.k} heads costs than "
                f"ablating {self.k} random non-retrieval heads (near +{self.full_accuracy:.2f}: only the top heads "
                "matter; near 0: they matter no more than any)")
        if distinct < len(self.random_heads):
            text += (f"; only {distinct} distinct random draws of {self.k} exist among the non-retrieval heads, so "
                     "some repeat")
        return text

    def __repr__(self) -> str:
        return (f"CausalCheck(k={self.k}, full={self.full_accuracy:.3f}, top={self.top_accuracy:.3f} "
                f"{self.top_heads}, random mean={self.mean_random_accuracy:.3f} over {len(self.random_heads)} draws, "
                f"gap={self.gap:+.3f})")


def _distinct_draws(pool: list[str], k: int, n: int, rng: random.Random) -> list[list[str]]:
    """``n`` random k-subsets of ``pool``, all different while there are enough of them."""
    order = {h: names.parse_node(h).sort_key() for h in pool}
    total = math.comb(len(pool), k)
    if total <= 10_000:
        combos = [list(c) for c in itertools.combinations(sorted(pool, key=order.get), k)]
        return rng.sample(combos, n) if n <= total else [rng.choice(combos) for _ in range(n)]
    seen: set[tuple[str, ...]] = set()
    draws: list[list[str]] = []
    while len(draws) < n:
        draw = tuple(sorted(rng.sample(pool, k), key=order.get))
        if draw not in seen:
            seen.add(draw)
            draws.append(list(draw))
    return draws


def retrieval_causal_check(
    model,
    task: Task | Sequence[NeedlePrompt],
    scores: Scores,
    k: int,
    n_random: int = 5,
    seed: int = 0,
    *,
    threshold: float = RETRIEVAL_THRESHOLD,
    accuracy: str = "full",
    batch_size: int = 16,
    progress: bool = True,
) -> CausalCheck:
    """Ablate (uniform attention) the ``k`` best heads by ``scores`` and ``n_random`` draws of ``k``
    random heads scoring ``<= threshold`` (distinct draws while there are enough); report needle
    accuracy for each (see `CausalCheck`).

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:retrieval-handbuilt")
        >>> task = ck.zoo_task("retrieval-handbuilt", model, context_lengths=[64])
        >>> scores = ck.retrieval_scores(model, task, progress=False)
        >>> check = ck.retrieval_causal_check(model, task, scores, k=1, progress=False)
        >>> check.top_heads, check.full_accuracy, check.top_accuracy
        (['a1.h0'], 1.0, 0.0)
    """
    n_heads_total = model.cfg.n_layers * model.cfg.n_heads
    if not 1 <= k <= n_heads_total:
        raise InputError(f"k must be between 1 and the model's {n_heads_total} heads, got {k}")
    if n_random < 1:
        raise InputError(f"n_random must be >= 1, got {n_random}")
    head_values = {label: v for label, v in scores.as_dict().items() if names.parse_node(label).kind == "head"}
    names.check_model_components(model, head_values)
    if len(head_values) != n_heads_total:
        raise InputError(f"scores cover {len(head_values)} heads but the model has {n_heads_total}; "
                         "score every head (retrieval_scores does)")
    ranked = sorted(head_values, key=lambda h: -head_values[h])
    top = ranked[:k]
    pool = [h for h in ranked if head_values[h] <= threshold]
    if len(pool) < k:
        raise InputError(f"only {len(pool)} heads score <= {threshold}, fewer than k={k}; lower k or raise the threshold")
    prompts = needle_prompts(task)
    check_needle_prompts(model, prompts)
    draws = _distinct_draws(pool, k, n_random, random.Random(seed))
    runs = [[], top, *draws]
    accs = [needle_accuracy(model, prompts, heads, accuracy, batch_size)[0]
            for heads in tqdm(runs, desc="causal check", disable=not progress)]
    return CausalCheck(k, top, draws, accs[0], accs[1], accs[2:], accuracy,
                       meta={"threshold": threshold, "seed": seed, "n_prompts": len(prompts)})
