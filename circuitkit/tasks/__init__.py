"""Tasks: clean / corrupted batches, answers and metrics; builders for common tasks."""

from circuitkit.tasks import metrics
from circuitkit.tasks.builders import (
    BUILDERS,
    build_task,
    greater_than,
    induction,
    ioi,
    multiple_choice,
    needle,
)
from circuitkit.tasks.metrics import METRICS, make_kl_metric, normalized
from circuitkit.tasks.task import (
    PAD_ANSWER,
    PAD_POSITION,
    Metric,
    OutOfVocabularyError,
    Task,
    TaskError,
)

__all__ = [
    "BUILDERS", "METRICS", "PAD_ANSWER", "PAD_POSITION", "Metric", "OutOfVocabularyError", "Task", "TaskError", "build_task", "greater_than", "induction", "ioi",
    "make_kl_metric", "metrics", "multiple_choice", "needle", "normalized",
]
