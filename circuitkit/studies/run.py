"""Run (or resume) a whole study: plan, execute the missing units, compact, return the results table."""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

import pandas as pd

from circuitkit.errors import RunError
from circuitkit.studies import store
from circuitkit.studies.executors import EXECUTORS, UnitQueue, WorkerDied, check_executor
from circuitkit.studies.plan import coerce_spec, prepare_run
from circuitkit.studies.spec import StudySpec


class StudyInterrupted(RunError):
    """A run stopped early (Ctrl-C, a full disk, a dead worker); everything committed is kept.

    ``str(exc)`` is the one line to show, e.g. ``interrupted: 57/96 units saved; rerun the same
    command to resume``. ``saved`` / ``total`` count units; ``cause`` is ``"interrupt"``,
    ``"disk full"`` or ``"worker died"``.
    """

    def __init__(self, cause: str, saved: int, total: int, detail: str = ""):
        self.cause, self.saved, self.total, self.detail = cause, saved, total, detail
        fix = "free some space, then rerun" if cause == "disk full" else "rerun"
        head = "interrupted" if cause == "interrupt" else f"stopped ({detail or cause})"
        super().__init__(f"{head}: {saved}/{total} units saved; {fix} the same command to resume")


def _disk_full(exc: BaseException) -> bool:
    # pyarrow reports a full disk as an OSError without errno, naming it in the message.
    return isinstance(exc, OSError) and (exc.errno in (errno.ENOSPC, errno.EDQUOT)
                                         or "No space left on device" in str(exc)
                                         or "Disk quota exceeded" in str(exc))


def run_study(
    spec_or_path: StudySpec | str | os.PathLike | dict,
    executor: str = "serial",
    workers: int | None = None,
    force_new: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or resume) a study and return its full results table (`load_results`).

    ``executor``: ``"serial"`` (this process), ``"process"`` (``workers`` spawned processes on
    this machine) or ``"ray"`` (``workers`` Ray actors; connects to a running cluster when
    ``RAY_ADDRESS`` is set, else starts a local one). Finished units are committed as they come,
    so calling again after an interruption runs only what is missing. Several runs may work on
    one ``output_dir`` at once: each unit is computed by one of them. The last run to finish
    compacts the store into one Parquet file.

    Raises `StudyInterrupted` (a one-line message with the count of saved units) on
    Ctrl-C, a full disk or a dead worker.

    Examples:
        >>> import tempfile
        >>> import circuitkit as ck
        >>> spec = {"models": ["zoo:induction-handbuilt"],
        ...         "tasks": [{"name": "induction", "params": {"n_prompts": 8}}],
        ...         "ablations": ["zero"], "targets": {"every_head": True},
        ...         "output_dir": tempfile.mkdtemp()}
        >>> results = ck.run_study(spec, progress=False)  # zero-ablate each head in turn
        >>> len(results), results.loc[results.recovered < 0.5, "target"].tolist()
        (8, ['a0.h0', 'a1.h0'])
    """
    check_executor(executor, workers)
    spec = coerce_spec(spec_or_path)
    out = spec.output_dir
    todo, total, lock = prepare_run(spec, force_new)
    claims = store.Claims(out) if todo else None
    try:
        if todo:
            EXECUTORS[executor](spec, UnitQueue(todo, claims, out), total, workers, progress)
        try:
            store.compact(out, lock)
        except OSError as exc:
            if _disk_full(exc):  # nothing lost: the parts stay, the next run compacts them
                warnings.warn(f"study store: no space to compact {out}/parts; the parts are kept and the next "
                              "run compacts them", stacklevel=2)
            else:
                raise
    except (KeyboardInterrupt, WorkerDied, OSError) as exc:
        if isinstance(exc, OSError) and not _disk_full(exc):
            raise
        if claims is not None:
            claims.release_all()
        lock.close()  # before reading: this process's own reader lock would wait on it
        saved = len(store.done_keys(out))
        if isinstance(exc, KeyboardInterrupt):
            raise StudyInterrupted("interrupt", saved, total) from exc
        if isinstance(exc, OSError):
            raise StudyInterrupted("disk full", saved, total, "disk full: No space left on device") from exc
        raise StudyInterrupted("worker died", saved, total, str(exc)) from exc
    finally:
        if claims is not None:
            claims.release_all()
        lock.close()
    results = store.load_results(out)
    results.attrs.update(units_run=len(todo), units_total=total)  # what this call did, for the CLI's line
    return results


def load_results(output_dir: str | os.PathLike | Path) -> pd.DataFrame:
    """The results table of a study folder (see `circuitkit.studies.store.load_results`).

    Examples:
        >>> import tempfile
        >>> import circuitkit as ck
        >>> out = tempfile.mkdtemp()
        >>> spec = {"models": ["zoo:induction-handbuilt"],
        ...         "tasks": [{"name": "induction", "params": {"n_prompts": 8}}],
        ...         "ablations": ["zero"], "targets": {"head_sets": {"induction": ["a1.h0"]}},
        ...         "output_dir": out}
        >>> _ = ck.run_study(spec, progress=False)
        >>> ck.load_results(out)[["target", "components", "recovered"]]
              target components  recovered
        0  induction      a1.h0        0.0
    """
    return store.load_results(output_dir)
