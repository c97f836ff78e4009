"""circuitkit.patching: exact activation and path patching, direct logit attribution, logit lens.

The batched engine they share lives in `circuitkit.patching.engine`.
"""

from circuitkit.patching.activation import (
    TARGETS,
    activation_patching,
    patch_head_sets,
    valid_targets,
)
from circuitkit.patching.lens import direct_logit_attribution, logit_lens
from circuitkit.patching.path import RECEIVER_INPUTS, path_patching

__all__ = [
    "TARGETS",
    "RECEIVER_INPUTS",
    "activation_patching",
    "patch_head_sets",
    "valid_targets",
    "path_patching",
    "direct_logit_attribution",
    "logit_lens",
]
