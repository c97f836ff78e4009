"""Where units run: this process, spawned processes, or Ray actors.

Every executor takes chunks of units of one model from a `UnitQueue` (which claims each
unit in the store first, so concurrent runs on one folder never compute a unit twice), hands
them to a worker that keeps a `UnitRunner` (so each worker loads each model once) and
commits each finished chunk from the driver, so the store is only ever written by drivers.
Chunks are claimed as workers free up, not all at the start, so concurrent runs share the work.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable

from tqdm.auto import tqdm

from circuitkit.errors import InputError, MissingDependencyError, RunError
from circuitkit.lifeline import QuietSpawnContext
from circuitkit.studies import store
from circuitkit.studies.checks import WORKER_BASE_BYTES, gigabytes, machine_memory
from circuitkit.studies.plan import Unit
from circuitkit.studies.runner import UnitRunner
from circuitkit.studies.spec import StudySpec

EXECUTOR_NAMES = ("serial", "process", "ray")
_POLL_S = 0.05  # wait between looks at units another run is computing


class WorkerDied(RunError):
    """A worker process or Ray actor (or its node) died; the units it held were not committed."""


def check_executor(executor: str, workers: int | None) -> None:
    if executor not in EXECUTOR_NAMES:
        raise InputError(f"unknown executor {executor!r}; choose one of {list(EXECUTOR_NAMES)}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise MissingDependencyError("the ray executor needs Ray: python -m pip install -e \".[ray]\" in the "
                                         "circuitkit checkout") from None


def worker_warning(executor: str, workers: int | None, infos) -> str | None:
    """A warning when more workers than CPUs would run on this machine (process executor, local
    Ray): they only share the CPUs, and each holds its own copy of the models and their caches —
    the message gives that memory (`checks.ModelInfo.memory_bytes` per model)."""
    if executor == "process":
        n = _default_workers(workers)
    elif executor == "ray" and not os.environ.get("RAY_ADDRESS"):
        n = workers or 2
    else:
        return None
    cpus = os.cpu_count() or 1
    if n <= cpus:
        return None
    each = WORKER_BASE_BYTES + sum(info.memory_bytes for info in infos)
    memory = machine_memory()
    have = f"; this machine has {gigabytes(memory)}" if memory else ""
    return (f"--workers {n} is more than the {cpus} CPUs of this machine: the workers only share them, and each "
            f"holds its own copy of the models and their caches, about {gigabytes(each)} per worker "
            f"({gigabytes(n * each)} for {n}{have}); use --workers {cpus} or fewer")


class UnitQueue:
    """The units a run still lacks, handed out in chunks of one model, each unit claimed first.

    Units another live run has claimed are set aside and offered again once the rest is done:
    if that run commits them they are dropped, if it dies its claims vanish and they run here.
    """

    def __init__(self, units: list[Unit], claims: store.Claims, commit_to: os.PathLike,
                 identity: str | None = None):
        self._pending = deque(units)
        self._busy: list[Unit] = []
        self.claims = claims
        self.out = commit_to
        self.identity = identity  # written into each part's metadata
        self.committed = 0

    @property
    def finished(self) -> bool:
        return not self._pending and not self._busy

    def peek(self) -> Unit | None:
        return self._pending[0] if self._pending else (self._busy[0] if self._busy else None)

    def take(self, size: int) -> list[Unit]:
        """Up to ``size`` claimed units of one model (empty: none free right now; see ``finished``)."""
        if not self._pending:
            self._pending.extend(self._busy)
            self._busy = []
        chunk: list[Unit] = []
        while self._pending and len(chunk) < size:
            unit = self._pending[0]
            if chunk and unit.model != chunk[0].model:
                break
            self._pending.popleft()
            try:
                state = self.claims.claim(unit.key)
            except OSError as exc:
                self._pending.appendleft(unit)
                raise store.StoreError("claim a unit in", exc.filename or self.claims.dir, exc) from exc
            if state == store.Claims.MINE:
                chunk.append(unit)
            elif state == store.Claims.BUSY:
                self._busy.append(unit)
        return chunk

    def commit(self, rows: list[dict]) -> None:
        try:
            part = store.commit_rows(self.out, rows, self.identity)
        except OSError as exc:
            raise store.StoreError("write a part into", os.path.join(self.out, store.PARTS), exc) from exc
        self.claims.finish((store.row_key(r) for r in rows), part.name)
        self.committed += len(rows)


def chunk_size(n_units: int, n_workers: int) -> int:
    """Units per chunk for parallel executors: about four chunks per worker, 1..16 units."""
    return max(1, min(16, math.ceil(n_units / (4 * n_workers))))


def _bar(total: int, progress: bool, executor: str):
    return tqdm(total=total, desc=f"study ({executor})", unit="unit", disable=not progress)


def _drive(queue: UnitQueue, size: int, capacity: int, submit: Callable[[list[Unit]], object],
           wait_one: Callable[[], list[dict]], in_flight: Callable[[], int], bar) -> None:
    """Keep up to ``capacity`` chunks running; commit each as it finishes."""
    while True:
        while in_flight() < capacity and (chunk := queue.take(size)):
            submit(chunk)
        if in_flight():
            rows = wait_one()
            queue.commit(rows)
            bar.update(len(rows))
        elif queue.finished:
            return
        else:  # only units another live run holds: wait for it to commit them (or die)
            time.sleep(_POLL_S)


def run_serial(spec: StudySpec, queue: UnitQueue, total: int, workers: int | None, progress: bool) -> None:
    runner = UnitRunner(spec)
    done: deque[list[dict]] = deque()
    with _bar(total, progress, "serial") as bar:
        first = queue.peek()
        size = runner.units_per_pass(first) if first is not None else 1
        _drive(queue, size, 1, lambda chunk: done.append(runner.run_many(chunk)), done.popleft,
               lambda: len(done), bar)


# --- process pool -------------------------------------------------------------------------------

_WORKER_RUNNER: UnitRunner | None = None


def _init_worker(spec: StudySpec, threads: int) -> None:
    import torch

    global _WORKER_RUNNER
    torch.set_num_threads(threads)
    _WORKER_RUNNER = UnitRunner(spec)


def _run_chunk(units: list[Unit]) -> list[dict]:
    assert _WORKER_RUNNER is not None
    return _WORKER_RUNNER.run_many(units)


def _default_workers(workers: int | None) -> int:
    return workers or max(1, min(4, os.cpu_count() or 1))


def run_process(spec: StudySpec, queue: UnitQueue, total: int, workers: int | None, progress: bool) -> None:
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    n = _default_workers(workers)
    threads = max(1, (os.cpu_count() or 1) // n)
    # Workers start with SIGINT ignored and exit when their driver dies, even by kill -9 (`circuitkit.lifeline`).
    pool = ProcessPoolExecutor(max_workers=n, mp_context=QuietSpawnContext(),
                               initializer=_init_worker, initargs=(spec, threads))
    pending: set = set()
    finished: deque = deque()

    def wait_one() -> list[dict]:
        nonlocal pending
        if not finished:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            finished.extend(done)
        try:
            return finished.popleft().result()
        except BrokenProcessPool as exc:
            raise WorkerDied(f"a worker process died ({exc})") from None

    try:
        with _bar(total, progress, "process") as bar:
            _drive(queue, chunk_size(total, n), 2 * n, lambda chunk: pending.add(pool.submit(_run_chunk, chunk)),
                   wait_one, lambda: len(pending) + len(finished), bar)
    except BaseException:
        # Stop at once: running chunks would only be lost anyway (their claims are released).
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


# --- Ray ----------------------------------------------------------------------------------------

def run_ray(spec: StudySpec, queue: UnitQueue, total: int, workers: int | None, progress: bool) -> None:
    import ray
    from ray.exceptions import RayActorError, WorkerCrashedError

    n = workers or 2
    started_here = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            # Workers inherit this process's environment (zoo path, PYTHONPATH) on a local instance.
            ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False)
        started_here = True
    try:
        threads = 1 if os.environ.get("RAY_ADDRESS") else max(1, int(ray.cluster_resources().get("CPU", n)) // n)

        @ray.remote(num_cpus=1)
        class UnitWorker:
            def __init__(self, spec_dict: dict, base_dir: str | None):
                import torch

                torch.set_num_threads(threads)
                self.runner = UnitRunner(StudySpec.from_dict(spec_dict, base_dir))

            def run(self, chunk: list[Unit]) -> list[dict]:
                return self.runner.run_many(chunk)

        spec_dict = spec.to_dict()
        base_dir = str(spec.base_dir) if spec.base_dir is not None else None  # units name models as the spec does
        actors = [UnitWorker.remote(spec_dict, base_dir) for _ in range(n)]
        idle = deque(actors)
        running: dict = {}  # object ref -> actor

        def submit(chunk: list[Unit]) -> None:
            actor = idle.popleft()
            running[actor.run.remote(chunk)] = actor

        def wait_one() -> list[dict]:
            [ref], _ = ray.wait(list(running), num_returns=1)
            idle.append(running.pop(ref))
            try:
                return ray.get(ref)
            except (RayActorError, WorkerCrashedError) as exc:
                raise WorkerDied(f"a Ray worker died ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None

        with _bar(total, progress, "ray") as bar:
            _drive(queue, chunk_size(total, n), n, submit, wait_one, lambda: len(running), bar)
    finally:
        if started_here:
            ray.shutdown()


EXECUTORS: dict[str, Callable[[StudySpec, UnitQueue, int, int | None, bool], None]] = {
    "serial": run_serial,
    "process": run_process,
    "ray": run_ray,
}
