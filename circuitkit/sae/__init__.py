"""circuitkit.sae: sparse autoencoders through SAELens — train, load, measure, explain, attribute.

* :func:`train_sae` (hyperparameters: :class:`SAETrainConfig`) / :func:`save_sae` / :func:`load_sae` / :func:`load_pretrained_sae`
* :func:`sae_quality` -> :class:`SAEQuality` (explained variance, L0, dead fraction, CE recovered)
* :func:`encode`, :func:`top_activating_examples`, :func:`feature_card`, :func:`logit_effects`,
  :func:`feature_cards` (one card per feature node of a circuit: what hovering it shows)
* :func:`feature_attribution` (attribution patching through the spliced SAE, error term kept),
  :func:`feature_patching` (exact), :func:`spliced_sae`
* :func:`discrete_sae_head_scores` (O'Neill & Bui 2024)
* :func:`make_sites` / :func:`splice_run` (several SAEs and transcoders spliced at once, error
  terms kept), :func:`feature_graph` -> :class:`FeatureGraph` (node and edge estimates, Marks et
  al. 2024), :func:`exact_node_effects` / :func:`exact_edge_effects`;
  :func:`linear_feature_graph` (exact edges over transcoders, circuit-tracer's construction)
"""

from circuitkit.sae.attribution import feature_attribution, feature_patching, spliced_sae
from circuitkit.sae.cards import feature_cards
from circuitkit.sae.discrete import discrete_sae_head_scores, head_output_means
from circuitkit.sae.features import (
    FeatureCard,
    check_sae_fits,
    encode,
    feature_card,
    feature_label,
    logit_effects,
    top_activating_examples,
)
from circuitkit.sae.graph import FeatureGraph, exact_edge_effects, exact_node_effects, feature_graph
from circuitkit.sae.linear import linear_feature_graph
from circuitkit.sae.quality import SAEQuality, sae_quality
from circuitkit.sae.splice import Site, make_sites, splice_run
from circuitkit.sae.train import SAETrainConfig, load_pretrained_sae, load_sae, save_sae, train_sae

__all__ = [
    "FeatureCard",
    "FeatureGraph",
    "Site",
    "exact_edge_effects",
    "exact_node_effects",
    "feature_graph",
    "linear_feature_graph",
    "make_sites",
    "splice_run",
    "SAEQuality",
    "SAETrainConfig",
    "check_sae_fits",
    "discrete_sae_head_scores",
    "encode",
    "feature_attribution",
    "feature_card",
    "feature_cards",
    "feature_label",
    "feature_patching",
    "head_output_means",
    "load_pretrained_sae",
    "logit_effects",
    "load_sae",
    "sae_quality",
    "save_sae",
    "spliced_sae",
    "top_activating_examples",
    "train_sae",
]
