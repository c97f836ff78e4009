"""circuitkit.sae: sparse autoencoders through SAELens — train, load, measure, explain, attribute.

* `train_sae` (hyperparameters: `SAETrainConfig`) / `save_sae` / `load_sae` / `load_pretrained_sae`
* `sae_quality` -> `SAEQuality` (explained variance, L0, dead fraction, CE recovered)
* `encode`, `top_activating_examples`, `feature_card`, `logit_effects`,
  `feature_cards` (one card per feature node of a circuit: what hovering it shows)
* `feature_attribution` (attribution patching through the spliced SAE, error term kept),
  `feature_patching` (exact), `spliced_sae`
* `discrete_sae_head_scores` (O'Neill & Bui 2024)
* `make_sites` / `splice_run` (several SAEs and transcoders spliced at once, error
  terms kept), `feature_graph` -> `FeatureGraph` (node and edge estimates, Marks et
  al. 2024), `exact_node_effects` / `exact_edge_effects`;
  `linear_feature_graph` (exact edges over transcoders, circuit-tracer's construction)
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
