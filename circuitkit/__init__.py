"""circuitkit: mechanistic interpretability with circuit discovery.

TransformerLens hooked models drive activation patching, attribution (EAP / EAP-IG),
retrieval-head identification and SAE feature extraction; results are labelled ``Scores`` that
become a networkx ``Circuit`` rendered with Plotly. Every method: ``method(model, task, ...) -> Scores``.
"""

__version__ = "0.1.0"

from circuitkit import names
from circuitkit.ablation import ABLATIONS, AblationResult, ablate, ablation_hooks, run_ablated
from circuitkit.models import ModelLoadError, load_model
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
from circuitkit.zoo import ZooCard, list_zoo, zoo_card, zoo_task

__all__ = [
    "ABLATIONS", "AblationResult", "ModelLoadError", "Scores", "Task", "ZooCard", "__version__", "ablate",
    "ablation_hooks", "build_task", "greater_than", "induction", "ioi", "list_zoo", "load_model",
    "make_kl_metric", "metrics", "multiple_choice", "names", "needle", "normalized", "run_ablated",
    "zoo_card", "zoo_task",
]
