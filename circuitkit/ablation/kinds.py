"""The one ablation vocabulary: what an ablated component (or edge) reads instead of its live value.

* ``zero`` — zeros;
* ``mean`` — the mean over the reference (clean) prompts at each position;
* ``mean-corrupted`` — the mean over the corrupted prompts at each position (auto-circuit's
  ``TOKENWISE_MEAN_CORRUPT``; edge ablation and patching only);
* ``resample`` — another reference prompt's value (a seeded derangement: never the prompt's own);
* ``corrupted`` — the value on the matched corrupted prompt (edge ablation and patching only).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from circuitkit.errors import InputError

AblationKind = Literal["zero", "mean", "mean-corrupted", "resample", "corrupted"]
ABLATION_KINDS: tuple[AblationKind, ...] = ("corrupted", "mean", "mean-corrupted", "resample", "zero")
# The one default of every circuit method (eap, eap_ig, exact_edge_patching, acdc, discover,
# evaluate, smallest_faithful, faithfulness_curve), so the API and `circuitkit discover` score and
# prune with the same ablation and give the same circuit.
DEFAULT_ABLATION: AblationKind = "mean"
# Node ablation reads its values from one reference batch, so it has no kind made of the corrupted prompts.
NODE_ABLATION_KINDS: tuple[AblationKind, ...] = ("zero", "mean", "resample")
# What an SAE feature graph's ablated nodes take (circuitkit.sae.graph): a first-order estimate
# needs one value per node and prompt, so no resample.
FEATURE_ABLATION_KINDS: tuple[AblationKind, ...] = ("mean", "corrupted", "zero")


def check_kind(kind: str, allowed: tuple[str, ...] = ABLATION_KINDS, what: str = "ablation") -> AblationKind:
    """``kind`` if it is one of ``allowed``, else ``ValueError`` listing them."""
    if kind not in allowed:
        raise InputError(f"unknown {what} {kind!r}; choose one of {allowed}")
    return kind  # type: ignore[return-value]


def resample_permutation(n_reference: int, n: int | None = None, seed: int = 0, prompts: str = "reference") -> Tensor:
    """``[n]`` indices into ``n_reference`` prompts, row ``i`` never reading prompt ``i mod n_reference``.

    A seeded random non-zero shift per row, so every prompt gets another prompt's activation.
    """
    if n_reference < 2:
        raise InputError(f"resample ablation needs at least 2 {prompts} prompts to draw from, got {n_reference}; "
                         "add prompts or use kind='mean'")
    n = n_reference if n is None else n
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.randint(1, n_reference, (n,), generator=gen)
    return (torch.arange(n) + offsets) % n_reference
