"""Run (or resume) a whole study: plan, execute the missing units, return the results table."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from circuitkit.studies import store
from circuitkit.studies.executors import EXECUTORS, check_executor
from circuitkit.studies.plan import coerce_spec, prepare_run
from circuitkit.studies.spec import StudySpec


def run_study(
    spec_or_path: StudySpec | str | os.PathLike | dict,
    executor: str = "serial",
    workers: int | None = None,
    force_new: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or resume) a study and return its full results table (:func:`load_results`).

    ``executor``: ``"serial"`` (this process), ``"process"`` (``workers`` spawned processes on
    this machine) or ``"ray"`` (``workers`` Ray actors; connects to a running cluster when
    ``RAY_ADDRESS`` is set, else starts a local one). Finished units are committed as they come,
    so calling again after an interruption runs only what is missing.
    """
    check_executor(executor, workers)
    spec = coerce_spec(spec_or_path)
    todo = prepare_run(spec, force_new)
    if todo:
        EXECUTORS[executor](spec, todo, workers, progress)
    return store.load_results(spec.output_dir)


def load_results(output_dir: str | os.PathLike | Path) -> pd.DataFrame:
    """The results table of a study folder (see :func:`circuitkit.studies.store.load_results`)."""
    return store.load_results(output_dir)
