"""Where units run: this process, spawned processes, or Ray actors.

Every executor hands chunks of units of one model to a worker that keeps a :class:`UnitRunner`
(so each worker loads each model once) and commits each finished chunk from the driver, so
the store is only ever written by one process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator

from tqdm.auto import tqdm

from circuitkit.studies import store
from circuitkit.studies.plan import Unit
from circuitkit.studies.runner import UnitRunner
from circuitkit.studies.spec import StudySpec

EXECUTOR_NAMES = ("serial", "process", "ray")


def check_executor(executor: str, workers: int | None) -> None:
    if executor not in EXECUTOR_NAMES:
        raise ValueError(f"unknown executor {executor!r}; choose one of {list(EXECUTOR_NAMES)}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("the ray executor needs Ray: pip install 'circuitkit[ray]'") from None


def chunks(units: list[Unit], n_workers: int) -> list[list[Unit]]:
    """Split units into chunks of one model each, about four per worker per model (1..16 units)."""
    by_model: dict[str, list[Unit]] = {}
    for unit in units:
        by_model.setdefault(unit.model, []).append(unit)
    out = []
    for model_units in by_model.values():
        size = max(1, min(16, math.ceil(len(model_units) / (4 * n_workers))))
        out += [model_units[i:i + size] for i in range(0, len(model_units), size)]
    return out


def _bar(total: int, progress: bool, executor: str):
    return tqdm(total=total, desc=f"study ({executor})", unit="unit", disable=not progress)


def run_serial(spec: StudySpec, units: list[Unit], workers: int | None, progress: bool) -> None:
    runner = UnitRunner(spec)
    with _bar(len(units), progress, "serial") as bar:
        for unit in units:
            store.commit_rows(spec.output_dir, [runner.run(unit)])
            bar.update(1)


# --- process pool -------------------------------------------------------------------------------

_WORKER_RUNNER: UnitRunner | None = None


def _init_worker(spec: StudySpec, threads: int) -> None:
    import torch

    global _WORKER_RUNNER
    torch.set_num_threads(threads)
    _WORKER_RUNNER = UnitRunner(spec)


def _run_chunk(units: list[Unit]) -> list[dict]:
    assert _WORKER_RUNNER is not None
    return [_WORKER_RUNNER.run(unit) for unit in units]


def _default_workers(workers: int | None) -> int:
    return workers or max(1, min(4, os.cpu_count() or 1))


def run_process(spec: StudySpec, units: list[Unit], workers: int | None, progress: bool) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    n = _default_workers(workers)
    threads = max(1, (os.cpu_count() or 1) // n)
    with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(spec, threads)) as pool, \
            _bar(len(units), progress, "process") as bar:
        pending = {pool.submit(_run_chunk, chunk) for chunk in chunks(units, n)}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                rows = future.result()
                store.commit_rows(spec.output_dir, rows)
                bar.update(len(rows))


# --- Ray ----------------------------------------------------------------------------------------

def _ray_results(spec: StudySpec, units: list[Unit], n: int) -> Iterator[list[dict]]:
    import ray
    from ray.util import ActorPool

    started_here = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(include_dashboard=False)
        else:
            # Workers inherit this process's environment (zoo path, PYTHONPATH) on a local instance.
            ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False)
        started_here = True
    try:
        threads = max(1, int(ray.cluster_resources().get("CPU", n)) // n) if not os.environ.get("RAY_ADDRESS") else 1

        @ray.remote(num_cpus=1)
        class UnitWorker:
            def __init__(self, spec_dict: dict):
                import torch

                torch.set_num_threads(threads)
                self.runner = UnitRunner(StudySpec.from_dict(spec_dict))

            def run(self, chunk: list[Unit]) -> list[dict]:
                return [self.runner.run(unit) for unit in chunk]

        spec_dict = spec.to_dict()
        pool = ActorPool([UnitWorker.remote(spec_dict) for _ in range(n)])
        yield from pool.map_unordered(lambda actor, chunk: actor.run.remote(chunk), chunks(units, n))
    finally:
        if started_here:
            ray.shutdown()


def run_ray(spec: StudySpec, units: list[Unit], workers: int | None, progress: bool) -> None:
    n = workers or 2
    with _bar(len(units), progress, "ray") as bar:
        for rows in _ray_results(spec, units, n):
            store.commit_rows(spec.output_dir, rows)
            bar.update(len(rows))


EXECUTORS: dict[str, Callable[[StudySpec, list[Unit], int | None, bool], None]] = {
    "serial": run_serial,
    "process": run_process,
    "ray": run_ray,
}
