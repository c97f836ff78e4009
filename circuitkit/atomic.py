"""Atomic file and folder writes: everything circuitkit saves goes through here, so an
interrupted or failed write never leaves a half-written file behind (temp beside, then rename)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from circuitkit.errors import InputError, MissingFileError


def _parent(path: Path, make_parents: bool) -> None:
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.exists():
        raise MissingFileError(f"cannot write {path}: folder {path.parent} does not exist; create it first")


TEMP_SUFFIX = ".tmp"  # what an interrupted write leaves behind: ``.{name}.XXXX.tmp`` beside the target


def write_with(path: str | os.PathLike, write: Callable[[str], object], *, fsync: bool = False,
               make_parents: bool = False) -> Path:
    """Call ``write(tmp_path)`` (e.g. ``frame.to_parquet``) and rename the result onto ``path``;
    ``fsync`` flushes the finished file to disk before the rename."""
    path = Path(path)
    _parent(path, make_parents)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False, make_parents: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; ``fsync`` also flushes it to disk before the rename."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return write_with(path, write, fsync=fsync, make_parents=make_parents)


def write_text(path: str | os.PathLike, text: str, **kwargs) -> Path:
    return write_bytes(path, text.encode("utf-8"), **kwargs)


@contextlib.contextmanager
def folder_written(final: str | os.PathLike) -> Iterator[Path]:
    """A fresh folder beside ``final`` to fill; when the block ends without an error it replaces
    ``final`` in one rename (`replace_dir`), and in any case nothing unfinished is left."""
    final = Path(final)
    if final.exists() and not final.is_dir():  # replace_dir would put the folder where a file was
        raise InputError(f"{final} is a file, not a folder; give a folder path (nothing was written)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield tmp
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: Path, final: Path) -> Path:
    """Move the finished folder ``tmp`` onto ``final``, replacing any previous version."""
    if final.exists():
        backup = final.parent / f".{final.name}.old"
        shutil.rmtree(backup, ignore_errors=True)
        final.rename(backup)
        tmp.rename(final)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        tmp.rename(final)
    return final
