"""circuitkit.attribution: gradient estimates of patching effects and the exact reference.

* `attribution_patching` — node attribution (a linear estimate of activation patching);
* `eap` / `eap_ig` — edge attribution patching (with integrated gradients, the QK fix);
* `exact_edge_patching` — every edge ablated alone, exactly: the estimators' ground truth;
* `relp` — relevance patching: attribution patching with LRP's backward rules.
"""

from circuitkit.attribution.edge import eap, eap_ig
from circuitkit.attribution.exact import exact_edge_patching
from circuitkit.attribution.node import ATTRIBUTION_TARGETS, attribution_patching
from circuitkit.attribution.relevance import RELP_RULES, relp, relp_rules

__all__ = ["ATTRIBUTION_TARGETS", "RELP_RULES", "attribution_patching", "eap", "eap_ig", "exact_edge_patching", "relp",
           "relp_rules"]
