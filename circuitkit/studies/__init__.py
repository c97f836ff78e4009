"""Batch ablation studies: a spec file -> resumable, parallel runs -> a Parquet table.

The HTML report of a study is drawn by `circuitkit.viz.report.write_report` (figures live in
`circuitkit.viz`, above this package).
"""

from circuitkit.studies.checks import validate
from circuitkit.studies.plan import Unit, plan_units
from circuitkit.studies.run import StudyInterrupted, load_results, run_study
from circuitkit.studies.runner import UnitRunner, top_k_heads
from circuitkit.studies.spec import SpecError, StudySpec, TaskSpec
from circuitkit.studies.summary import summarize

__all__ = [
    "SpecError", "StudyInterrupted", "StudySpec", "TaskSpec", "Unit", "UnitRunner", "load_results", "plan_units", "run_study",
    "summarize", "top_k_heads", "validate",
]
