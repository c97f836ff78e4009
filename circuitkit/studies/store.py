"""The results store: a folder of Parquet files that holds under concurrent runs, kills and damage.

Layout of ``output_dir``::

    study.json                  the study's identity (`circuitkit.studies.identity`: the spec, the
                                content of every input file, the versions), the spec and the
                                planned unit count (written temp + rename)
    study.lock                  flock: every run (and reader) holds it shared; compaction, clean-up
                                and ``--force-new`` take it exclusive
    claims/<unit id>            one per unit being computed, flock'd by the run computing it (the OS
                                drops the lock when that process dies, so a killed run never blocks
                                a resume); once the unit is committed the run writes ``done <part>``
                                into it, naming the part that holds it
    parts/part-<id>.parquet     rows committed as they finish (temp file + rename); ``<id>`` hashes
                                the unit keys inside; the study's identity is in the file's metadata
    parts/results-<id>.parquet  the compacted table: when the last active run finishes it merges
                                every part into this one file and removes the parts and claims
    parts/.*.tmp                half-written parts of a killed run: ignored, removed on the next start
    quarantine/                 what could not be used, moved aside (named in a warning): unreadable
                                parts (their units are run again), parts of another study and stray
                                files

A row exists once its part's rename happened, so a run killed at any instant (``kill -9``
included) loses only unfinished units. Claims keep concurrent runs on one folder from computing
a unit twice, so every reader sees each unit once: ``load_results``, ``pd.read_parquet("DIR/parts")``,
DuckDB ``SELECT * FROM 'DIR/parts/*.parquet'``, polars. (Only a run killed between committing a
part and marking its claims can leave a unit twice; `load_results` drops the repeat and the
next compaction removes it from disk.) Parts are not fsynced: a part torn by a power cut is
unreadable, so it is quarantined and its units rerun. A claim counts as done only while the part
it names is in ``parts/``: the units of a quarantined part are taken again.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
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
IDENTITY_META = b"circuitkit.study"  # Parquet metadata key: the identity of the study a part belongs to
_DONE = b"done"
_PART_NAME = re.compile(r"(part|results)-[0-9a-f]{20}\.parquet")
_ANY = object()  # load_results: read the identity from study.json


class StoreError(RunError):
    """Reading or writing the study folder failed: a full disk, an unwritable or vanished folder.
    ``disk_full`` tells a full disk (or quota) from other causes; ``reason`` is the OS's words."""

    def __init__(self, action: str, path: str | os.PathLike, exc: OSError):
        self.path, self.errno = str(path), exc.errno
        self.disk_full = is_disk_full(exc)
        self.reason = "No space left on device" if self.disk_full else (exc.strerror or str(exc).splitlines()[0])
        super().__init__(f"cannot {action} {self.path}: {self.reason}")


def is_disk_full(exc: BaseException) -> bool:
    # pyarrow reports a full disk as an OSError without errno, naming it in the message.
    return isinstance(exc, OSError) and (exc.errno in (errno.ENOSPC, errno.EDQUOT)
                                         or "No space left on device" in str(exc)
                                         or "Disk quota exceeded" in str(exc))


class CorruptStudyFile(InputError):
    """``study.json`` cannot be read; rerunning the study's spec rebuilds it (keeping results that
    carry the spec's identity) and ``--force-new`` starts over."""


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
        info = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        problem = f"not valid JSON ({str(exc).splitlines()[0]})"
    else:
        if isinstance(info, dict):
            return info
        problem = f"a JSON {type(info).__name__}, not the study's record"
    raise CorruptStudyFile(f"{path} is {problem}; run the study's spec again to rebuild it (results made from that "
                           "spec are kept), or pass --force-new to delete the results and start over")


def study_identity(out: Path) -> str | None:
    """The identity ``study.json`` records (None: no study file, or one written before identities)."""
    info = read_study_file(out)
    return info.get("identity") if info else None


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
        self.parts = Path(out) / PARTS
        self.dir.mkdir(parents=True, exist_ok=True)
        self._held: dict[str, int] = {}

    def claim(self, key: Sequence[Any]) -> str:
        """``MINE`` (this run now computes the unit), ``BUSY`` (a live run is computing it) or
        ``DONE`` (another run committed it since this run listed the store). A claim marked done
        whose part is no longer in ``parts/`` (quarantined, or the mark of an older version) is
        taken over: the unit runs again."""
        uid = unit_id(key)
        fd = os.open(self.dir / uid, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self.BUSY
        try:
            if os.fstat(fd).st_size:
                mark = os.pread(fd, 512, 0)
                part = mark[len(_DONE) + 1:].decode("utf-8", "replace") if mark.startswith(_DONE + b" ") else ""
                if _PART_NAME.fullmatch(part) and (self.parts / part).is_file():
                    os.close(fd)
                    return self.DONE
                os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        self._held[uid] = fd
        return self.MINE

    def finish(self, keys: Iterable[Sequence[Any]], part: str = "") -> None:
        """Mark committed units done (in ``part``, a file name in ``parts/``) and release them."""
        for key in keys:
            fd = self._held.pop(unit_id(key), None)
            if fd is None:
                continue
            try:
                os.pwrite(fd, _DONE + b" " + part.encode(), 0)
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
    """Drop all results (``--force-new``); refused while another run uses the folder.

    ``study.json`` goes first, so a clean-up that fails half-way is never taken for the old study.
    A symbolic link (``parts`` pointing at another study's parts, say) is removed itself, never
    followed: what it points to is left untouched. Anything that cannot be removed raises
    `RunError` naming it."""
    if not lock.try_exclusive():
        raise RunError(f"output_dir {str(out)!r} is in use by another run (it holds {LOCK_FILE}); "
                           "wait for it to finish or stop it before passing --force-new")
    for name in (STUDY_FILE, PARTS, CLAIMS, QUARANTINE):
        _remove(Path(out) / name)


def _remove(path: Path) -> None:
    """Remove a file, a folder or a symbolic link (the link, not its target); raise if anything stays."""
    try:
        if path.is_symlink():
            target = os.readlink(path)
            path.unlink()
            warnings.warn(f"study store: {path} was a symbolic link to {target}; --force-new removed the link and "
                          f"left {target} untouched", stacklevel=3)
        elif path.is_dir():
            def fail(function, name, exc_info):  # rmtree names the entry it could not remove in full here
                exc = exc_info[1]
                raise OSError(getattr(exc, "errno", None), getattr(exc, "strerror", None) or str(exc), name)

            shutil.rmtree(path, onerror=fail)  # removes links inside as links, never following them
        elif path.exists():
            path.unlink()
    except OSError as exc:
        raise RunError(f"--force-new cannot remove {exc.filename or path} ({exc.strerror or exc}); the old results "
                       f"are not all gone: fix that, or delete {path} yourself, then run again") from None
    if os.path.lexists(path):
        raise RunError(f"--force-new could not remove {path} (it came back or was recreated while clearing); "
                       "make sure no other program writes there, then run again")


def _write_table(path: Path, rows_or_frame, fsync: bool, identity: str | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(rows_or_frame, pd.DataFrame):
        table = pa.Table.from_pandas(rows_or_frame, preserve_index=False)
    else:
        table = pa.Table.from_pylist(rows_or_frame)
    if identity is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), IDENTITY_META: identity.encode()})
    return write_with(path, lambda tmp: pq.write_table(table, tmp), fsync=fsync)


def commit_rows(out: Path, rows: list[dict[str, Any]], identity: str | None | object = _ANY) -> Path:
    """Write ``rows`` (finished units) as one Parquet part: temp file, then rename. The part carries
    ``identity`` (default: the one ``study.json`` records) in its metadata."""
    if not rows:
        raise InputError("commit_rows needs at least one row")
    if identity is _ANY:
        identity = study_identity(out)
    keys = sorted(unit_id(row_key(r)) for r in rows)
    return _write_table(Path(out) / PARTS / f"part-{unit_id(keys)}.parquet", rows, fsync=False, identity=identity)


def compact(out: Path, lock: FolderLock, wait_s: float = 2.0, identity: str | None | object = _ANY) -> bool:
    """Merge every part into one ``results-<id>.parquet`` and remove the parts and claims, if no
    other run is active (else the last one to finish does it). True if this call compacted.

    ``wait_s``: how long to wait for other holders of the folder lock (a run finishing at the same
    time, a reader); a run still working holds it longer and compacts when it ends. Parts that
    cannot be used are quarantined first (`load_results`)."""
    out = Path(out)
    if not lock.try_exclusive(wait_s):
        return False
    if identity is _ANY:
        identity = study_identity(out)
    sweep_strays(out)
    files = part_files(out)
    if len(files) == 1 and files[0].name.startswith("results-") and not any((out / CLAIMS).glob("*")):
        return True
    frame = _read_parts(out, files, identity)
    if frame is not None:
        ids = sorted(unit_id(k) for k in frame[list(UNIT_KEY)].itertuples(index=False, name=None))
        target = out / PARTS / f"results-{unit_id(ids)}.parquet"
        # fsync: the parts it replaces are deleted next.
        _write_table(target, frame.drop_duplicates(subset=list(UNIT_KEY), keep="first"), fsync=True,
                     identity=identity)
        for f in files:
            if f != target:
                f.unlink(missing_ok=True)
    try:
        # The claims only matter while parts are being committed; a left-over one is harmless (a
        # claim counts as done only while its part exists), so failing to remove them is not fatal.
        if (out / CLAIMS).is_symlink():
            (out / CLAIMS).unlink()
        else:
            shutil.rmtree(out / CLAIMS)
    except FileNotFoundError:
        pass
    except OSError as exc:
        warnings.warn(f"study store: compacted {out / PARTS} but could not remove {out / CLAIMS} "
                      f"({exc.strerror or exc}); it is harmless, delete it when convenient", stacklevel=2)
    return True


# --- reading ------------------------------------------------------------------------------------

def part_files(out: Path) -> list[Path]:
    """Committed Parquet files (the compacted table first, then parts): the files in ``parts/``
    named as the store names them (anything else there is a stray, see `strays`)."""
    parts = Path(out) / PARTS
    files = [p for p in parts.glob("*.parquet") if _PART_NAME.fullmatch(p.name)] if parts.is_dir() else []
    return sorted(files, key=lambda p: (not p.name.startswith("results-"), p.name))


def strays(out: Path) -> list[Path]:
    """What ``parts/`` holds besides the store's own files: other files, folders, links to folders
    (hidden names are skipped: temp files of runs in progress, ``.DS_Store``)."""
    parts = Path(out) / PARTS
    if not parts.is_dir():
        return []
    return sorted(p for p in parts.iterdir()
                  if not p.name.startswith(".") and not (_PART_NAME.fullmatch(p.name) and p.is_file()))


def sweep_strays(out: Path) -> None:
    """Quarantine stray files in ``parts/`` (Parquet readers of the folder would take them for results)."""
    for path in strays(out):
        quarantine(out, path, "not a file the study store writes", what="a stray")


def quarantine(out: Path, path: Path, reason: str, what: str = "unreadable") -> Path | None:
    """Move a part that cannot be used to ``quarantine/`` and warn, naming it; None (and a warning)
    where it cannot be moved (a read-only folder): readers then skip it."""
    target_dir = Path(out) / QUARANTINE
    target = target_dir / path.name
    try:
        target_dir.mkdir(exist_ok=True)
        n = 1
        while os.path.lexists(target) and (path.is_dir() or target.is_dir()):
            target, n = target_dir / f"{path.name}.{n}", n + 1
        path.rename(target)  # a move aside (replacing an earlier file of that name), not a write
    except FileNotFoundError:  # another reader moved it first
        return target
    except OSError as exc:
        warnings.warn(f"study store: {path} is {what} ({reason}) and could not be moved to {target_dir} "
                      f"({exc.strerror or exc}); it is skipped", stacklevel=3)
        return None
    if what == "unreadable":
        tail = "its units will run again"
    else:
        tail = "nothing of this study was lost"
    warnings.warn(f"study store: {path} is {what} ({reason}); moved it to {target} and {tail}", stacklevel=3)
    return target


def _not_ours(table, identity: str | None) -> str | None:
    """Why a readable Parquet table is not a part of the study with ``identity`` (None: it is one)."""
    import pyarrow as pa

    missing = [c for c in UNIT_KEY if c not in table.column_names]
    if missing:
        return f"it has no column {', '.join(missing)}"
    for name in UNIT_KEY:
        column = table.column(name)
        kind = pa.types.is_integer if name == "seed" else (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t))
        if not kind(column.type) or column.null_count:
            return f"its {name!r} column holds {column.type}{' with nulls' if column.null_count else ''}"
    if identity is None:
        return None
    found = (table.schema.metadata or {}).get(IDENTITY_META)
    if found is None:
        return "it records no study identity: it was not written by this study"
    if found.decode(errors="replace") != identity:
        return f"it belongs to the study {found.decode(errors='replace')}, this folder's is {identity}"
    return None


def _read_parts(out: Path, files: list[Path], identity: str | None) -> pd.DataFrame | None:
    import pyarrow.parquet as pq

    frames = []
    for f in files:
        try:
            table = pq.read_table(f)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for a torn file
            if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EIO):
                raise
            quarantine(out, f, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            continue
        problem = _not_ours(table, identity)
        if problem is not None:
            quarantine(out, f, problem, what="not a part of this study")
            continue
        frames.append(table.to_pandas())
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True)


def part_identities(out: Path) -> set[str | None]:
    """The study identities the readable parts record (None for a part that records none)."""
    import pyarrow.parquet as pq

    found = set()
    for f in part_files(out):
        try:
            metadata = pq.read_schema(f).metadata or {}
        except (OSError, ValueError):  # unreadable: quarantined when read
            continue
        value = metadata.get(IDENTITY_META)
        found.add(value.decode(errors="replace") if value is not None else None)
    return found


def load_results(out: str | os.PathLike, identity: str | None | object = _ANY) -> pd.DataFrame:
    """All committed rows of the study in ``out``, one per unit, as a DataFrame.

    Columns: ``model, task, ablation, target, seed`` (the unit key), ``target_kind``,
    ``components``, ``n_components``, ``n_prompts``, for each metric ``M``: ``M`` (ablated),
    ``M_clean``, ``M_corrupted``, ``M_recovered``; ``recovered`` (of the first metric) and ``seconds``.
    Unreadable parts, parts of another study (``identity``: by default the one ``study.json``
    records) and stray files in ``parts/`` are quarantined (see the module docstring).
    """
    out = Path(out)
    if not out.is_dir():
        raise MissingFileError(f"no study results folder at {str(out)!r}; run `circuitkit study run SPEC` first")
    if identity is _ANY:
        identity = study_identity(out)
    lock = _reader_lock(out) if (out / PARTS).is_dir() else None
    try:
        sweep_strays(out)
        for _ in range(10):  # without a lock a compaction may remove listed parts: list again
            try:
                frame = _read_parts(out, part_files(out), identity)
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


def done_keys(out: Path, identity: str | None | object = _ANY) -> set[tuple]:
    """Unit keys already committed (for resuming)."""
    return keys_of(load_results(out, identity))
