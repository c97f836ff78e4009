"""The results store: a folder of Parquet files that holds under concurrent runs, kills and damage.

Layout of ``output_dir``::

    study.json                  the spec, its hash and the planned unit count (written temp + rename)
    study.lock                  flock: every run (and reader) holds it shared; compaction, clean-up
                                and ``--force-new`` take it exclusive
    claims/<unit id>            one per unit being computed, flock'd by the run computing it (the OS
                                drops the lock when that process dies, so a killed run never blocks
                                a resume); the run writes ``done`` into it once the unit is committed
    parts/part-<id>.parquet     rows committed as they finish (temp file + rename); ``<id>`` hashes
                                the unit keys inside
    parts/results-<id>.parquet  the compacted table: when the last active run finishes it merges
                                every part into this one file and removes the parts and claims
    parts/.*.tmp                half-written parts of a killed run: ignored, removed on the next start
    quarantine/                 parts that could not be read, moved aside (named in a warning);
                                their units are run again

A row exists once its part's rename happened, so a run killed at any instant (``kill -9``
included) loses only unfinished units. Claims keep concurrent runs on one folder from computing
a unit twice, so every reader sees each unit once: ``load_results``, ``pd.read_parquet("DIR/parts")``,
DuckDB ``SELECT * FROM 'DIR/parts/*.parquet'``, polars. (Only a run killed between committing a
part and marking its claims can leave a unit twice; `load_results` drops the repeat and the
next compaction removes it from disk.) Parts are not fsynced: a part torn by a power cut is
unreadable, so it is quarantined and its units rerun.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from circuitkit.atomic import TEMP_SUFFIX, write_bytes, write_with
from circuitkit.errors import InputError, MissingFileError, RunError

UNIT_KEY = ("model", "task", "ablation", "target", "seed")
PARTS = "parts"
CLAIMS = "claims"
QUARANTINE = "quarantine"
STUDY_FILE = "study.json"
LOCK_FILE = "study.lock"
_DONE = b"done"


def unit_id(key: Iterable[Any]) -> str:
    return hashlib.sha1(json.dumps([str(k) for k in key]).encode()).hexdigest()[:20]


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(row[k] for k in UNIT_KEY)


def write_study_file(out: Path, info: dict[str, Any]) -> None:
    write_bytes(Path(out) / STUDY_FILE, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode(), fsync=True)


def read_study_file(out: Path) -> dict[str, Any] | None:
    path = Path(out) / STUDY_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); delete it or pass --force-new to start over") from None


# --- the folder lock ----------------------------------------------------------------------------

class FolderLock:
    """``study.lock``, held shared by each run and reader of a folder and exclusive by whoever
    rewrites it (clean-up, compaction, ``--force-new``). A flock: released when its process dies."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)

    def shared(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def try_exclusive(self, wait_s: float = 0.0) -> bool:
        """Exclusive if no other run or reader holds the folder (a held shared lock is converted),
        trying for up to ``wait_s`` seconds. On failure this lock is released (held by nothing)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                # Holding nothing while waiting, so two runs finishing together cannot block each other.
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reader_lock(out: Path) -> FolderLock | None:
    """A shared lock for reading, or None where the folder is read-only (then read without one)."""
    try:
        lock = FolderLock(out)
    except OSError:
        return None
    lock.shared()
    return lock


# --- claims -------------------------------------------------------------------------------------

class Claims:
    """Per-unit claims of one run (see the module docstring). ``claim`` never blocks."""

    MINE, BUSY, DONE = "mine", "busy", "done"

    def __init__(self, out: Path):
        self.dir = Path(out) / CLAIMS
        self.dir.mkdir(parents=True, exist_ok=True)
        self._held: dict[str, int] = {}

    def claim(self, key: Sequence[Any]) -> str:
        """``MINE`` (this run now computes the unit), ``BUSY`` (a live run is computing it) or
        ``DONE`` (another run committed it since this run listed the store)."""
        uid = unit_id(key)
        fd = os.open(self.dir / uid, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self.BUSY
        if os.fstat(fd).st_size:
            os.close(fd)
            return self.DONE
        self._held[uid] = fd
        return self.MINE

    def finish(self, keys: Iterable[Sequence[Any]]) -> None:
        """Mark committed units done and release them."""
        for key in keys:
            fd = self._held.pop(unit_id(key), None)
            if fd is None:
                continue
            try:
                os.pwrite(fd, _DONE, 0)
            except OSError:  # a full disk: the part is committed; a later run reruns at worst
                pass
            os.close(fd)

    def release_all(self) -> None:
        """Release unfinished claims (an interrupted run): another run may take them."""
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()


# --- writing ------------------------------------------------------------------------------------

def prepare(out: Path, lock: FolderLock) -> None:
    """Create ``parts/`` and, when no other run is active, remove temp files a killed run left."""
    parts = Path(out) / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    if lock.try_exclusive():
        for tmp in parts.glob(f".*{TEMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
    lock.shared()


def clear(out: Path, lock: FolderLock) -> None:
    """Drop all results (``--force-new``); refused while another run uses the folder."""
    if not lock.try_exclusive():
        raise RunError(f"output_dir {str(out)!r} is in use by another run (it holds {LOCK_FILE}); "
                           "wait for it to finish or stop it before passing --force-new")
    for name in (PARTS, CLAIMS, QUARANTINE):
        shutil.rmtree(Path(out) / name, ignore_errors=True)
    (Path(out) / STUDY_FILE).unlink(missing_ok=True)


def _write_table(path: Path, rows_or_frame, fsync: bool) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(rows_or_frame, pd.DataFrame):
        table = pa.Table.from_pandas(rows_or_frame, preserve_index=False)
    else:
        table = pa.Table.from_pylist(rows_or_frame)
    return write_with(path, lambda tmp: pq.write_table(table, tmp), fsync=fsync)


def commit_rows(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` (finished units) as one Parquet part: temp file, then rename."""
    if not rows:
        raise InputError("commit_rows needs at least one row")
    keys = sorted(unit_id(row_key(r)) for r in rows)
    return _write_table(Path(out) / PARTS / f"part-{unit_id(keys)}.parquet", rows, fsync=False)


def compact(out: Path, lock: FolderLock, wait_s: float = 2.0) -> bool:
    """Merge every part into one ``results-<id>.parquet`` and remove the parts and claims, if no
    other run is active (else the last one to finish does it). True if this call compacted.

    ``wait_s``: how long to wait for other holders of the folder lock (a run finishing at the same
    time, a reader); a run still working holds it longer and compacts when it ends."""
    out = Path(out)
    if not lock.try_exclusive(wait_s):
        return False
    files = part_files(out)
    if len(files) == 1 and files[0].name.startswith("results-") and not any((out / CLAIMS).glob("*")):
        return True
    frame = _read_parts(out, files)
    if frame is not None:
        ids = sorted(unit_id(k) for k in frame[list(UNIT_KEY)].itertuples(index=False, name=None))
        target = out / PARTS / f"results-{unit_id(ids)}.parquet"
        # fsync: the parts it replaces are deleted next.
        _write_table(target, frame.drop_duplicates(subset=list(UNIT_KEY), keep="first"), fsync=True)
        for f in files:
            if f != target:
                f.unlink(missing_ok=True)
    shutil.rmtree(out / CLAIMS, ignore_errors=True)
    return True


# --- reading ------------------------------------------------------------------------------------

def part_files(out: Path) -> list[Path]:
    """Committed Parquet files (the compacted table first, then parts)."""
    files = (Path(out) / PARTS).glob("*.parquet")
    return sorted(files, key=lambda p: (not p.name.startswith("results-"), p.name))


def quarantine(out: Path, path: Path, reason: str) -> Path:
    """Move an unreadable part to ``quarantine/`` and warn, naming it."""
    target_dir = Path(out) / QUARANTINE
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    try:
        path.rename(target)  # a move aside (replacing an earlier one of that name), not a write
    except FileNotFoundError:  # another reader moved it first
        return target
    warnings.warn(f"study store: {path} is unreadable ({reason}); moved it to {target} and its units "
                  "will run again", stacklevel=3)
    return target


def _read_parts(out: Path, files: list[Path]) -> pd.DataFrame | None:
    import pyarrow.parquet as pq

    frames = []
    for f in files:
        try:
            frames.append(pq.read_table(f).to_pandas())
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for a torn file
            if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EIO):
                raise
            quarantine(out, f, str(exc).splitlines()[0])
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True)


def load_results(out: str | os.PathLike) -> pd.DataFrame:
    """All committed rows of the study in ``out``, one per unit, as a DataFrame.

    Columns: ``model, task, ablation, target, seed`` (the unit key), ``target_kind``,
    ``components``, ``n_components``, ``n_prompts``, for each metric ``M``: ``M`` (ablated),
    ``M_clean``, ``M_corrupted``, ``M_recovered``; ``recovered`` (of the first metric) and ``seconds``.
    Unreadable parts are quarantined (see the module docstring).
    """
    out = Path(out)
    if not out.is_dir():
        raise MissingFileError(f"no study results folder at {str(out)!r}; run `circuitkit study run SPEC` first")
    lock = _reader_lock(out) if (out / PARTS).is_dir() else None
    try:
        for _ in range(10):  # without a lock a compaction may remove listed parts: list again
            try:
                frame = _read_parts(out, part_files(out))
                break
            except FileNotFoundError:
                continue
        else:
            raise RunError(f"the parts of {out} kept changing while being read; read again")
    finally:
        if lock is not None:
            lock.close()
    if frame is None:
        return pd.DataFrame(columns=list(UNIT_KEY))
    frame = frame.drop_duplicates(subset=list(UNIT_KEY), keep="first")
    return frame.sort_values(list(UNIT_KEY), kind="stable").reset_index(drop=True)


def keys_of(frame: pd.DataFrame) -> set[tuple]:
    if frame.empty:
        return set()
    return {(str(m), str(t), str(a), str(g), int(s))
            for m, t, a, g, s in frame[list(UNIT_KEY)].itertuples(index=False, name=None)}


def done_keys(out: Path) -> set[tuple]:
    """Unit keys already committed (for resuming)."""
    return keys_of(load_results(out))
