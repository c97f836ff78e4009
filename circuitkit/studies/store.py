"""The results store: a folder of Parquet part files, each committed by an atomic rename.

Layout of ``output_dir``::

    study.json               the spec, its hash and the planned unit count (written temp + rename)
    parts/part-<id>.parquet  finished rows; ``<id>`` hashes the unit keys inside, so re-running a
                             unit rewrites the same file instead of adding a duplicate
    parts/.*.tmp             half-written parts of a killed run: ignored, removed on the next start

The ``parts`` folder is the manifest: a row exists once its part's rename happened, so a run
killed at any instant (``kill -9`` included) loses only unfinished units. Reading concatenates
the parts and drops repeated unit keys (which only a crash between two renames of overlapping
chunks could leave). DuckDB can read the same files: ``SELECT * FROM 'DIR/parts/*.parquet'``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from circuitkit.atomic import TEMP_SUFFIX, write_bytes, write_with

UNIT_KEY = ("model", "task", "ablation", "target", "seed")
PARTS = "parts"
STUDY_FILE = "study.json"


def unit_id(key: Iterable[Any]) -> str:
    return hashlib.sha1(json.dumps([str(k) for k in key]).encode()).hexdigest()[:20]


def write_study_file(out: Path, info: dict[str, Any]) -> None:
    write_bytes(Path(out) / STUDY_FILE, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode(), fsync=True)


def read_study_file(out: Path) -> dict[str, Any] | None:
    path = Path(out) / STUDY_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it or pass --force-new to start over") from None


def prepare(out: Path) -> None:
    """Create ``parts/`` and remove temp files a killed run left behind."""
    parts = Path(out) / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    for tmp in parts.glob(f".*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def clear(out: Path) -> None:
    """Drop all results (``--force-new``)."""
    shutil.rmtree(Path(out) / PARTS, ignore_errors=True)
    (Path(out) / STUDY_FILE).unlink(missing_ok=True)


def commit_rows(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` (finished units) as one Parquet part: temp file, fsync, rename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError("commit_rows needs at least one row")
    keys = sorted(unit_id(tuple(r[k] for k in UNIT_KEY)) for r in rows)
    path = Path(out) / PARTS / f"part-{unit_id(keys)}.parquet"
    table = pa.Table.from_pylist(rows)
    return write_with(path, lambda tmp: pq.write_table(table, tmp), fsync=True)


def part_files(out: Path) -> list[Path]:
    return sorted((Path(out) / PARTS).glob("part-*.parquet"))


def load_results(out: str | os.PathLike) -> pd.DataFrame:
    """All committed rows of the study in ``out``, one per unit, as a DataFrame.

    Columns: ``model, task, ablation, target, seed`` (the unit key), ``target_kind``,
    ``components``, ``n_prompts``, for each metric ``M``: ``M`` (ablated), ``M_clean``,
    ``M_corrupted``, ``M_recovered``; ``recovered`` (of the first metric) and ``seconds``.
    """
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"no study results folder at {str(out)!r}; run `circuitkit study run SPEC` first")
    files = part_files(out)
    if not files:
        return pd.DataFrame(columns=list(UNIT_KEY))
    import pyarrow.parquet as pq

    frame = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    frame = frame.drop_duplicates(subset=list(UNIT_KEY), keep="first")
    return frame.sort_values(list(UNIT_KEY), kind="stable").reset_index(drop=True)


def done_keys(out: Path) -> set[tuple]:
    """Unit keys already committed (for resuming)."""
    frame = load_results(out)
    if frame.empty:
        return set()
    return {(str(m), str(t), str(a), str(g), int(s))
            for m, t, a, g, s in frame[list(UNIT_KEY)].itertuples(index=False, name=None)}
