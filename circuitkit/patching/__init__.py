"""circuitkit.patching: exact activation and path patching, direct logit attribution, logit lens.

(Attribution patching / EAP / EAP-IG live in ``attribution.py``, ``graph.py`` and ``eap.py``.)
"""

from circuitkit.patching.activation import TARGETS, activation_patching, patch_head_sets

__all__ = ["TARGETS", "activation_patching", "patch_head_sets"]
