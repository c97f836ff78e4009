"""Zero / mean / resample ablation of heads and MLPs."""

from circuitkit.ablation.hooks import (
    ABLATIONS,
    AblationResult,
    ablate,
    ablation_hooks,
    run_ablated,
    validate_components,
)

__all__ = ["ABLATIONS", "AblationResult", "ablate", "ablation_hooks", "run_ablated", "validate_components"]
