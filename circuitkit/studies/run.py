"""Run (or resume) a whole study: plan, execute the missing units, compact, return the results table."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd

from circuitkit.errors import CircuitkitError, RunError
from circuitkit.studies import store
from circuitkit.studies.executors import (
    EXECUTORS,
    UnitQueue,
    WorkerDied,
    check_executor,
    worker_warning,
)
from circuitkit.studies.plan import coerce_spec, open_store, plan_study
from circuitkit.studies.spec import StudySpec


class StudyInterrupted(RunError):
    """A run stopped early (Ctrl-C, a full disk, another storage failure, a dead worker); everything
    committed is kept.

    ``str(exc)`` is the one line to show, e.g. ``interrupted: 57/96 units saved; rerun the same
    command to resume``. ``saved`` / ``total`` count units; ``cause`` is ``"interrupt"``,
    ``"disk full"``, ``"storage"`` (the folder could not be read or written: ``detail`` says which
    and why) or ``"worker died"``.
    """

    def __init__(self, cause: str, saved: int, total: int, detail: str = ""):
        self.cause, self.saved, self.total, self.detail = cause, saved, total, detail
        fix = {"disk full": "free some space, then rerun", "storage": "fix that, then rerun"}.get(cause, "rerun")
        head = "interrupted" if cause == "interrupt" else f"stopped ({detail or cause})"
        super().__init__(f"{head}: {saved}/{total} units saved; {fix} the same command to resume")


def _disk_full(exc: BaseException) -> bool:
    return store.is_disk_full(exc)


_HEAL_ROUNDS = 3  # runs of the units a quarantine took away during the run, before giving up


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
    compacts the store into one Parquet file. Units whose part is found damaged (and
    quarantined) during the run are run again before it returns, so a run that returns has
    every unit.

    Raises `StudyInterrupted` (a one-line message with the count of saved units) on
    Ctrl-C, a storage failure (a full disk, an unwritable folder: at the start, mid-run or while
    compacting) or a dead worker.

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
    units, infos, record = plan_study(spec)
    total, identity = len(units), record["identity"]
    warning = worker_warning(executor, workers, infos.values())
    if warning:
        warnings.warn(warning, stacklevel=2)
    try:
        todo, lock = open_store(spec, units, record, force_new)
    except store.StoreError as exc:
        raise _stopped(exc, out, identity, units, 0) from None
    known, ran, claims = total - len(todo), 0, None
    try:
        for _ in range(_HEAL_ROUNDS + 1):
            if todo:
                try:
                    claims = store.Claims(out)
                except OSError as exc:
                    raise store.StoreError("write into", exc.filename or out, exc) from exc
                queue = UnitQueue(todo, claims, out, identity)
                try:
                    EXECUTORS[executor](spec, queue, total, workers, progress)
                finally:
                    ran += queue.committed
                    known += queue.committed
                    claims.release_all()
            try:
                store.compact(out, lock, identity=identity)
                lock.shared()  # the next round runs (and the final read reads) under the shared lock again
            except OSError as exc:
                raise store.StoreError("compact", exc.filename or Path(out) / store.PARTS, exc) from exc
            try:
                results = store.load_results(out, identity)
            except OSError as exc:
                raise store.StoreError("read", exc.filename or Path(out) / store.PARTS, exc) from exc
            # Units whose part was quarantined during the run (torn, or not this study's) run again now;
            # the table returned is the one read here, with every unit.
            done = store.keys_of(results)
            todo = [u for u in units if u.key not in done]
            if not todo:
                break
        else:
            raise RunError(f"{len(todo)} units of {out} went missing again in each of {_HEAL_ROUNDS} reruns (their parts "
                           "keep being quarantined; see the warnings); check the disk, then rerun")
    except (KeyboardInterrupt, WorkerDied, store.StoreError) as exc:
        if claims is not None:
            claims.release_all()
        lock.close()  # before reading: this process's own reader lock would wait on it
        if isinstance(exc, store.StoreError):
            raise _stopped(exc, out, identity, units, known) from exc
        saved = _saved(out, identity, units, known)
        if isinstance(exc, KeyboardInterrupt):
            raise StudyInterrupted("interrupt", saved, total) from exc
        raise StudyInterrupted("worker died", saved, total, str(exc)) from exc
    finally:
        if claims is not None:
            claims.release_all()
        lock.close()
    results.attrs.update(units_run=ran, units_total=total)  # what this call did, for the CLI's line
    return results


def _saved(out: Path, identity: str, units: list, known: int) -> int:
    """How many of the planned units the folder holds (``known`` where it cannot be read)."""
    try:
        done = store.done_keys(out, identity)
    except (OSError, CircuitkitError):
        return known
    return sum(u.key in done for u in units)


def _stopped(exc: store.StoreError, out: Path, identity: str, units: list, known: int) -> StudyInterrupted:
    saved = _saved(out, identity, units, known)
    if exc.disk_full:
        return StudyInterrupted("disk full", saved, len(units), "disk full: No space left on device")
    return StudyInterrupted("storage", saved, len(units), str(exc))


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
