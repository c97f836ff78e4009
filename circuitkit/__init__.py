"""circuitkit: mechanistic interpretability with circuit discovery.

TransformerLens hooked models drive activation patching, attribution (EAP / EAP-IG),
retrieval-head identification and SAE feature extraction; the results become a networkx
``Circuit`` rendered with Plotly. One data flow::

    model (HookedTransformer) + Task  ->  method  ->  Scores  ->  Circuit  ->  evaluate / compare / export / render

The result contract:

* estimators (``activation_patching``, ``path_patching``, ``attribution_patching``, ``eap``,
  ``eap_ig``, ``exact_edge_patching``, ``logit_lens``, ``direct_logit_attribution``,
  ``head_scores``, ``retrieval_scores``, the SAE attributions) return :class:`Scores`: one value
  per component id, with the ``meta`` keys listed in :data:`circuitkit.scores.META_KEYS`;
* selectors (``discover``, ``acdc``, ``smallest_faithful``, ``Circuit.top_k`` / ``threshold``)
  return a :class:`Circuit`;
* checks (``ablate``, ``evaluate``, ``retrieval_causal_check``, ``verify``, ``sae_quality``)
  return small report dataclasses;
* ``patch_head_sets`` returns a ``[n_sets]`` tensor (its items are sets of heads, which no
  component id labels), ``retrieval_heads`` the ids of the heads above a threshold and
  ``faithfulness_curve`` a pandas table.

This module re-exports the public API; SAE functions live in :mod:`circuitkit.sae` and batch
studies in :mod:`circuitkit.studies` (``run_study`` / ``load_results`` import on first use:
they pull in pyarrow and process pools). See ``docs/architecture.md`` for the layout.
"""

from circuitkit import names
from circuitkit.ablation import (
    ABLATIONS,
    AblationResult,
    ablate,
    ablation_hooks,
    run_ablated,
    run_with_edges,
)
from circuitkit.attribution import attribution_patching, eap, eap_ig, exact_edge_patching
from circuitkit.circuit import (
    Circuit,
    acdc,
    cap_by_route,
    completeness,
    discover,
    evaluate,
    faithfulness,
    faithfulness_curve,
    load_circuit,
    overlap,
    overlap_matrix,
    precision,
    recall,
    roc_auc,
    save_circuit,
    smallest_faithful,
)
from circuitkit.heads import (
    head_scores,
    retrieval_causal_check,
    retrieval_heads,
    retrieval_scores,
    retrieval_scores_generate,
)
from circuitkit.models import ModelLoadError, load_model
from circuitkit.patching import (
    activation_patching,
    direct_logit_attribution,
    logit_lens,
    patch_head_sets,
    path_patching,
)
from circuitkit.scores import Scores
from circuitkit.tasks import (
    Task,
    build_task,
    greater_than,
    induction,
    ioi,
    make_kl_metric,
    metrics,
    multiple_choice,
    needle,
    normalized,
)
from circuitkit.version import __version__
from circuitkit.zoo import ZooCard, list_zoo, verify, zoo_card, zoo_task

__all__ = [
    "ABLATIONS", "AblationResult", "Circuit", "ModelLoadError", "Scores", "Task", "ZooCard", "__version__",
    "ablate", "ablation_hooks", "acdc", "activation_patching", "attribution_patching", "build_task",
    "cap_by_route", "completeness", "direct_logit_attribution", "discover", "eap", "eap_ig", "evaluate", "exact_edge_patching",
    "faithfulness", "faithfulness_curve", "greater_than", "head_scores", "induction", "ioi", "list_zoo",
    "load_circuit", "load_model", "load_results", "logit_lens", "make_kl_metric", "metrics",
    "multiple_choice", "names", "needle", "normalized", "overlap", "overlap_matrix", "patch_head_sets",
    "path_patching", "precision", "recall", "retrieval_causal_check", "retrieval_heads", "retrieval_scores",
    "retrieval_scores_generate", "roc_auc", "run_ablated", "run_study", "run_with_edges", "save_circuit",
    "smallest_faithful", "verify", "zoo_card", "zoo_task",
]


def __getattr__(name: str):
    # Batch studies pull in pyarrow and process pools; import them on first use.
    if name in ("run_study", "load_results"):
        from circuitkit import studies

        return getattr(studies, name)
    raise AttributeError(f"module 'circuitkit' has no attribute {name!r}")
