"""Ensembles of discovery methods, after the entries that topped MIB's circuit-localisation shared
task (BlackboxNLP 2025; Mondorf et al., arXiv 2510.06811).

* `ensemble_mean` (parallel): each member method scores every edge, each member's scores are
  divided by their largest |score| (so no member dominates by scale; signs are kept), and an
  edge's score is the mean over members.
* `eap_ig_pruning` (sequential): EAP-IG's scores warm-start edge pruning's gate logits, so the
  learned mask starts from a ranking instead of from every gate equally open.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitkit import attribution
from circuitkit.ablation.kinds import DEFAULT_ABLATION
from circuitkit.circuit.discovery.mask_learning import WARM_START_SPREAD, edge_pruning
from circuitkit.errors import InputError
from circuitkit.scores import Scores

__all__ = ["ENSEMBLE_MEMBERS", "eap_ig_pruning", "ensemble_mean", "scale_normalized"]

# member name -> (estimator, the arguments that make it that member)
ENSEMBLE_MEMBERS = {
    "eap": (attribution.eap, {}),
    "eap-ig-inputs": (attribution.eap_ig, {"interpolate": "inputs"}),
    "eap-ig-activations": (attribution.eap_ig, {"interpolate": "activations"}),
}


def scale_normalized(values: Tensor) -> Tensor:
    """``values / max |values|`` (all zeros stay zeros): signs kept, largest magnitude 1."""
    top = values.abs().max()
    return values / top if float(top) > 0 else values.clone()


def ensemble_mean(model, task, *, ablation: str = DEFAULT_ABLATION, progress: bool = False,
                  source: dict[str, Tensor] | None = None, members: str = "eap,eap-ig-inputs,eap-ig-activations",
                  steps: int = 10) -> Scores:
    """The parallel ensemble: the mean over ``members`` (comma-separated names of
    `ENSEMBLE_MEMBERS`) of each member's edge scores scaled to largest |score| 1. ``steps``:
    the EAP-IG members' integration steps. The member scores are kept in ``meta["members"]``.

    Returns edge Scores ``[n_edges]``, estimating (in sign, not scale) ``m(edge ablated) - m(clean)``.
    """
    names_ = [m.strip() for m in members.split(",") if m.strip()]
    unknown = [m for m in names_ if m not in ENSEMBLE_MEMBERS]
    if not names_ or unknown:
        raise InputError(f"ensemble members {unknown or members!r} unknown; choose among {list(ENSEMBLE_MEMBERS)}, "
                         "comma-separated")
    runs = {}
    for name in names_:
        function, extra = ENSEMBLE_MEMBERS[name]
        kwargs = {**extra, **({"steps": steps} if function is attribution.eap_ig else {})}
        runs[name] = function(model, task, ablation=ablation, progress=progress, source=source, **kwargs)
    labels = runs[names_[0]].labels
    stacked = torch.stack([scale_normalized(runs[n].values.double()) for n in names_])
    meta = {**runs[names_[0]].meta, "members": names_, "member_scores": {n: runs[n].values for n in names_},
            "steps": steps}
    return Scores(stacked.mean(0).float(), list(labels), "ensemble-mean", task.name, task.metric_name, meta=meta)


def eap_ig_pruning(model, task, *, ablation: str = DEFAULT_ABLATION, progress: bool = False,
                   source: dict[str, Tensor] | None = None, ig_steps: int = 10, steps: int = 100, lr: float = 0.1,
                   sparsity: float = 1e-3, batch_size: int = 16, seed: int = 0,
                   spread: float = WARM_START_SPREAD) -> Scores:
    """The sequential ensemble: EAP-IG (``ig_steps``, input interpolation) ranks the edges, and
    edge pruning (``steps`` Adam steps; see `edge_pruning`) starts its gates from that ranking
    (``warm_start``) instead of all equally open. Scores as edge pruning's: the share of the
    annealed path each gate stays open. ``spread``: the starting logits fall from 3 (EAP-IG's top
    edge) to ``3 - spread`` (its last)."""
    ranking = attribution.eap_ig(model, task, steps=ig_steps, ablation=ablation, progress=progress, source=source)
    scores = edge_pruning(model, task, ablation, steps=steps, lr=lr, sparsity=sparsity, batch_size=batch_size,
                          seed=seed, progress=progress, source=source, warm_start=ranking, warm_start_spread=spread)
    scores.method = "eap-ig-pruning"
    scores.meta["ig_steps"] = ig_steps
    return scores
