"""circuitkit.sae: sparse autoencoders through SAELens — train, load, measure, explain, attribute.

* :func:`train_sae` (hyperparameters: :class:`SAETrainConfig`) / :func:`save_sae` / :func:`load_sae` / :func:`load_pretrained_sae`
* :func:`sae_quality` -> :class:`SAEQuality` (explained variance, L0, dead fraction, CE recovered)
* :func:`encode`, :func:`top_activating_examples`, :func:`feature_card`
* :func:`feature_attribution` (attribution patching through the spliced SAE, error term kept),
  :func:`feature_patching` (exact), :func:`spliced_sae`
* :func:`discrete_sae_head_scores` (O'Neill & Bui 2024)
"""

from circuitkit.sae.attribution import feature_attribution, feature_patching, spliced_sae
from circuitkit.sae.discrete import discrete_sae_head_scores, head_output_means
from circuitkit.sae.features import (
    FeatureCard,
    check_sae_fits,
    encode,
    feature_card,
    feature_label,
    top_activating_examples,
)
from circuitkit.sae.quality import SAEQuality, sae_quality
from circuitkit.sae.train import SAETrainConfig, load_pretrained_sae, load_sae, save_sae, train_sae

__all__ = [
    "FeatureCard",
    "SAEQuality",
    "SAETrainConfig",
    "check_sae_fits",
    "discrete_sae_head_scores",
    "encode",
    "feature_attribution",
    "feature_card",
    "feature_label",
    "feature_patching",
    "head_output_means",
    "load_pretrained_sae",
    "load_sae",
    "sae_quality",
    "save_sae",
    "spliced_sae",
    "top_activating_examples",
    "train_sae",
]
