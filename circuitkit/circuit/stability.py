"""How stable a discovery method's circuit is: the same method on resampled prompts (and, for a
method with a ``seed``, another seed each time), compared pair by pair.

EAP-IG circuits can change a lot under prompt resampling and hyper-parameters (arXiv
2510.00845); the authors ask toolkits to report it. For each pair of runs: the Jaccard overlap of
their top-``k`` edges by |score| and the Spearman rank correlation of all their scores. A method
that prunes by itself (ACDC) is compared by its circuits' edges and its per-edge scores.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from circuitkit.ablation.kinds import DEFAULT_ABLATION
from circuitkit.circuit.discovery.methods import discovery_method
from circuitkit.circuit.discovery.pipeline import discover, score_edges
from circuitkit.errors import InputError

__all__ = ["circuit_stability", "jaccard", "spearman"]


def jaccard(a: set, b: set) -> float:
    """``|a & b| / |a | b|`` (1 for two empty sets)."""
    return len(a & b) / len(a | b) if a | b else 1.0


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(v: torch.Tensor) -> torch.Tensor:
        order = v.double().argsort()
        r = torch.empty(len(v), dtype=torch.float64)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in v.unique():  # ties share their mean rank
            tied = v == value
            if int(tied.sum()) > 1:
                r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    return float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])


def circuit_stability(model, task, method: str = "eap-ig", *, n_runs: int = 5, fraction: float = 0.5, k: int | None = None,
                      seed: int = 0, ablation: str = DEFAULT_ABLATION, method_args: Mapping[str, Any] | None = None,
                      progress: bool = False, threshold: float | None = None) -> pd.DataFrame:
    """Score the edges ``n_runs`` times, each on a seeded random ``fraction`` of ``task``'s prompts
    (a method that takes a ``seed`` also gets seed ``i`` on run ``i``), and compare every pair of
    runs: one row per pair with ``jaccard`` (top-``k`` edges by |score|; default a tenth of the
    graph) and ``spearman`` (all scores). ``attrs`` hold their means and the settings.

    A method that prunes by itself (``acdc``, ``threshold`` its tau) runs `discover` instead:
    ``jaccard`` compares the circuits it returns (their edges, whatever their size; ``k`` unused,
    ``attrs["compared"]`` says ``"circuits"``)
    and ``spearman`` its per-edge scores (ACDC: each edge's damage at its turn, 0 if untried).

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> table = ck.circuit_stability(model, task, "eap", n_runs=3)
        >>> len(table), round(table.attrs["jaccard_mean"], 2)
        (3, 1.0)
    """
    record = discovery_method(method)
    if isinstance(n_runs, bool) or not isinstance(n_runs, int) or n_runs < 2:
        raise InputError(f"n_runs must be a whole number >= 2 (pairs are compared), got {n_runs!r}")
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction!r}")
    n = max(2, round(fraction * len(task)))
    if n > len(task):
        raise InputError(f"the task has {len(task)} prompts; resampling needs at least 2")
    generator = torch.Generator().manual_seed(seed)
    runs, circuits = [], []
    for i in range(n_runs):
        idx = torch.randperm(len(task), generator=generator)[:n].sort().values
        args = dict(method_args or {})
        if "seed" in record.params:
            args.setdefault("seed", seed + i)
        if record.prunes:
            circuit = discover(model, task.subset(idx), method, ablation=ablation, progress=progress,
                               method_args=args, threshold=threshold)
            runs.append(circuit.scores("edge"))
            circuits.append(set(circuit.edges))
        else:
            runs.append(score_edges(model, task.subset(idx), method, ablation=ablation, progress=progress,
                                    method_args=args))
    labels = runs[0].labels
    values = [torch.tensor([float(d[e]) for e in labels]) for d in (r.as_dict() for r in runs)]  # one edge order
    k = k if k is not None else max(1, len(labels) // 10)
    tops = circuits or [set(sorted(labels, key=lambda e, s=s.as_dict(): -abs(s[e]))[:k]) for s in runs]
    rows = []
    for i, j in itertools.combinations(range(n_runs), 2):
        rows.append({"run_a": i, "run_b": j, "jaccard": jaccard(tops[i], tops[j]),
                     "spearman": spearman(values[i], values[j])})
    table = pd.DataFrame(rows)
    table.attrs.update(method=method, n_runs=n_runs, n_prompts=n, k=k, compared="circuits" if circuits else "top-k",
                       jaccard_mean=float(table.jaccard.mean()),
                       spearman_mean=float(table.spearman.mean()))
    return table
