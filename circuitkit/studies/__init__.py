"""Batch ablation studies: a spec file -> resumable, parallel runs -> a Parquet table and a report."""

from circuitkit.studies.runner import (
    Unit,
    UnitRunner,
    load_results,
    plan_units,
    run_study,
    top_k_heads,
)
from circuitkit.studies.spec import SpecError, StudySpec, TaskSpec, validate

__all__ = [
    "SpecError", "StudySpec", "TaskSpec", "Unit", "UnitRunner", "load_results", "plan_units", "run_study",
    "top_k_heads", "validate", "write_report",
]


def __getattr__(name: str):
    # The report pulls in Plotly; import it only when asked for.
    if name == "write_report":
        from circuitkit.studies.report import write_report

        return write_report
    raise AttributeError(f"module 'circuitkit.studies' has no attribute {name!r}")
