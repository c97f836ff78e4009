"""circuitkit: mechanistic interpretability with circuit discovery.

TransformerLens hooked models drive activation patching, attribution (EAP / EAP-IG),
retrieval-head identification and SAE feature extraction; the results become a networkx
``Circuit`` rendered with Plotly. One data flow::

    model (HookedTransformer) + Task  ->  method  ->  Scores  ->  Circuit  ->  evaluate / compare / export / render

The result contract:

* estimators (``activation_patching``, ``path_patching``, ``attribution_patching``, ``eap``,
  ``eap_ig``, ``exact_edge_patching``, ``logit_lens``, ``direct_logit_attribution``,
  ``head_scores``, ``retrieval_scores``, ``qr_scores``, ``locos_scores``, ``duo_gates``, the SAE attributions)
  return `Scores`: one value per component id, with the ``meta`` keys listed in `circuitkit.scores.META_KEYS`;
* selectors (``discover``, ``acdc``, ``smallest_faithful``, ``Circuit.top_k`` / ``threshold``)
  return a `Circuit`;
* checks (``ablate``, ``evaluate``, ``retrieval_causal_check``, ``verify``, ``sae_quality``)
  return small report dataclasses;
* ``patch_head_sets`` returns a ``[n_sets]`` tensor (its items are sets of heads, which no
  component id labels), ``retrieval_heads`` the ids of the heads above a threshold,
  ``select_edges`` the ids of the edges an edge selection picks and ``faithfulness_curve`` a
  pandas table.

This module re-exports the public API (each name imported on first use); SAE functions live in `circuitkit.sae` and batch
studies in `circuitkit.studies` (``run_study`` / ``load_results`` import on first use:
they pull in pyarrow and process pools). See ``docs/architecture.md`` for the layout.
"""

from circuitkit.lazy import lazy_exports
from circuitkit.version import __version__

# Public name -> the module it lives in. Names are imported on first use (PEP 562), so that
# `import circuitkit` (and the command line's `--help`) loads no torch / TransformerLens until a
# name that needs them is used.
_EXPORTS = {
    "names": "circuitkit.names",
    "ABLATIONS": "circuitkit.ablation",
    "AblationResult": "circuitkit.ablation",
    "ablate": "circuitkit.ablation",
    "ablation_hooks": "circuitkit.ablation",
    "run_ablated": "circuitkit.ablation",
    "run_with_edges": "circuitkit.ablation",
    "attribution_patching": "circuitkit.attribution",
    "eap": "circuitkit.attribution",
    "eap_ig": "circuitkit.attribution",
    "exact_edge_patching": "circuitkit.attribution",
    "relp": "circuitkit.attribution",
    "Circuit": "circuitkit.circuit",
    "acdc": "circuitkit.circuit",
    "cap_by_route": "circuitkit.circuit",
    "completeness": "circuitkit.circuit",
    "circuit_stability": "circuitkit.circuit",
    "discover": "circuitkit.circuit",
    "edge_pruning": "circuitkit.circuit",
    "evaluate": "circuitkit.circuit",
    "evaluate_feature_circuit": "circuitkit.circuit",
    "feature_circuit": "circuitkit.circuit",
    "feature_cards": "circuitkit.sae",
    "faithfulness": "circuitkit.circuit",
    "faithfulness_curve": "circuitkit.circuit",
    "load_circuit": "circuitkit.circuit",
    "mib_submission": "circuitkit.circuit.io",
    "check_mib_submission": "circuitkit.circuit.io",
    "overlap": "circuitkit.circuit",
    "overlap_matrix": "circuitkit.circuit",
    "precision": "circuitkit.circuit",
    "recall": "circuitkit.circuit",
    "roc_auc": "circuitkit.circuit",
    "save_circuit": "circuitkit.circuit",
    "smallest_faithful": "circuitkit.circuit",
    "select_edges": "circuitkit.circuit",
    "score_layers": "circuitkit.circuit",
    "head_scores": "circuitkit.heads",
    "retrieval_causal_check": "circuitkit.heads",
    "retrieval_heads": "circuitkit.heads",
    "retrieval_scores": "circuitkit.heads",
    "retrieval_scores_generate": "circuitkit.heads",
    "qr_scores": "circuitkit.heads",
    "locos_scores": "circuitkit.heads",
    "duo_gates": "circuitkit.heads",
    "ModelLoadError": "circuitkit.models",
    "CircuitkitError": "circuitkit.errors",
    "load_model": "circuitkit.models",
    "activation_patching": "circuitkit.patching",
    "direct_logit_attribution": "circuitkit.patching",
    "logit_lens": "circuitkit.patching",
    "patch_head_sets": "circuitkit.patching",
    "path_patching": "circuitkit.patching",
    "Scores": "circuitkit.scores",
    "Task": "circuitkit.tasks",
    "build_task": "circuitkit.tasks",
    "greater_than": "circuitkit.tasks",
    "induction": "circuitkit.tasks",
    "ioi": "circuitkit.tasks",
    "make_kl_metric": "circuitkit.tasks",
    "metrics": "circuitkit.tasks",
    "multiple_choice": "circuitkit.tasks",
    "needle": "circuitkit.tasks",
    "normalized": "circuitkit.tasks",
    "ZooCard": "circuitkit.zoo",
    "reference_circuit": "circuitkit.zoo",
    "circuit_figure": "circuitkit.viz",
    "circuit_html": "circuitkit.viz",
    "list_zoo": "circuitkit.zoo",
    "verify": "circuitkit.zoo",
    "zoo_card": "circuitkit.zoo",
    "zoo_task": "circuitkit.zoo",
    "run_study": "circuitkit.studies",
    "load_results": "circuitkit.studies",
}

# One export list: the table above is the public surface.
__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
