"""The store under concurrency and damage: concurrent runs, stale claims, torn parts, Ctrl-C, a full
disk, permissions and compaction. Each ends in the table an uninterrupted serial run gives."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from study_helpers import assert_same_table, small_spec, study_cli

from circuitkit.cli import main
from circuitkit.studies import load_results, run_study, store
from circuitkit.studies.store import UNIT_KEY, part_files

SPEC = dict(tasks=[{"name": "ioi", "params": {"n_prompts": 6}}])  # 24 units, each committed on its own
TINY = dict(models=["zoo:tiny-attn"], tasks=["induction"], ablations=["zero"])  # 4 units


@pytest.fixture(scope="module")
def reference(study_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIRCUITKIT_ZOO_PATH", str(study_zoo))
        return run_study(small_spec(out, **SPEC), progress=False)


def _spec_file(tmp_path, out="out", **kw):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(small_spec(out, **{**SPEC, **kw})))
    return path


def _wait_for_parts(out, n, proc, timeout=90):
    deadline = time.time() + timeout
    while (not (out / "parts").is_dir() or len(list((out / "parts").glob("part-*.parquet"))) < n) \
            and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)


def _worker_pids(pid: int) -> list[int]:
    """The process-pool workers a driver spawned (not its resource tracker)."""
    children = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in children.splitlines()
            if "spawn_main" in line and "resource_tracker" not in line]


def _wait_for_workers(proc, n: int = 2, timeout: float = 240) -> list[int]:
    # Spawned workers import torch and TransformerLens first: slow on a loaded machine.
    deadline = time.time() + timeout
    while len(_worker_pids(proc.pid)) < n and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    workers = _worker_pids(proc.pid)
    assert workers, f"no worker processes appeared (exit code {proc.poll()})"
    return workers


def test_two_concurrent_runs_compute_each_unit_once(zoo_env, tmp_path, reference):
    duckdb = pytest.importorskip("duckdb")
    spec_path = _spec_file(tmp_path)
    procs = [study_cli("run", str(spec_path), "--no-progress") for _ in range(2)]
    outputs = [p.communicate(timeout=180) for p in procs]
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
        assert f"{len(reference)} rows" in stdout
    out = tmp_path / "out"
    # On disk, as the README's DuckDB query reads it: every unit once, no more.
    con = duckdb.connect()
    n_rows, n_units = con.execute(
        f"SELECT count(*), count(DISTINCT (model, task, ablation, target, seed)) FROM '{out}/parts/*.parquet'").fetchone()
    assert n_rows == n_units == len(reference)
    assert len(pd.read_parquet(out / "parts")) == len(reference)  # pandas reads the folder as one dataset
    try:
        import polars
    except ImportError:  # not a dependency; checked where it is installed
        polars = None
    if polars is not None:
        assert polars.read_parquet(f"{out}/parts/*.parquet").height == len(reference)
    assert len(part_files(out)) == 1 and part_files(out)[0].name.startswith("results-")  # compacted
    assert not (out / "claims").exists()
    assert_same_table(load_results(out), reference)


def test_claims_of_a_dead_process_do_not_block(zoo_env, tmp_path, reference):
    """A unit claimed by a live run is left to it; once that process dies (kill -9) the OS drops
    its flock and a resume takes the unit."""
    spec = small_spec(tmp_path / "out", **SPEC)
    run_study(spec, progress=False)
    results = load_results(tmp_path / "out")
    held = results.iloc[0]
    key = tuple(held[k] for k in UNIT_KEY)
    # Remove that unit from the store, then hold its claim from another process.
    frame = results.iloc[1:]
    (part_files(tmp_path / "out")[0]).unlink()
    store.commit_rows(tmp_path / "out", frame.to_dict("records"))
    claims_dir = tmp_path / "out" / "claims"
    claims_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(claims_dir / store.unit_id(key))!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        claims = store.Claims(tmp_path / "out")
        assert claims.claim(key) == store.Claims.BUSY
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert claims.claim(key) == store.Claims.MINE  # the dead process's claim is gone
        claims.release_all()
    finally:
        holder.kill()
    assert_same_table(run_study(spec, progress=False), reference)


def test_truncated_part_is_quarantined_and_rerun(zoo_env, tmp_path, reference):
    out = tmp_path / "out"
    spec = small_spec(out, **SPEC)
    run_study(spec, progress=False)
    # Split the compacted table into four parts, as an interrupted run leaves them; tear one.
    results = load_results(out)
    part_files(out)[0].unlink()
    paths = [store.commit_rows(out, results.iloc[i:i + 6].to_dict("records")) for i in range(0, 24, 6)]
    torn = paths[1]
    data = torn.read_bytes()
    torn.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=rf"{torn.name} is unreadable .*moved it to .*quarantine.*will run again"):
        partial = load_results(out)  # a reader heals the store too: no "magic bytes" error
    assert len(partial) == 18 and (out / "quarantine" / torn.name).exists() and not torn.exists()
    assert_same_table(run_study(spec, progress=False), reference)  # the 6 lost units run again
    # A part torn again is quarantined by the run itself (a same-named file is replaced in quarantine).
    results = load_results(out)
    part_files(out)[0].unlink()
    store.commit_rows(out, results.iloc[:20].to_dict("records"))
    store.commit_rows(out, results.iloc[20:].to_dict("records"))
    bad = part_files(out)[-1]
    bad.write_bytes(b"")
    with pytest.warns(UserWarning, match=rf"{bad.name} is unreadable"):
        assert_same_table(run_study(spec, progress=False), reference)


def test_sigint_prints_one_line_and_resumes_exactly(zoo_env, tmp_path, reference, capsys):
    spec_path = _spec_file(tmp_path)
    out = tmp_path / "out"
    proc = study_cli("run", str(spec_path), "--no-progress")
    _wait_for_parts(out, 3, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    saved = len(load_results(out))
    assert 3 <= saved < len(reference)
    assert stderr.strip() == f"interrupted: {saved}/{len(reference)} units saved; rerun the same command to resume"
    assert main(["study", "run", str(spec_path), "--no-progress"]) == 0
    assert_same_table(load_results(out), reference)
    n = len(reference)
    assert f"ran {n - saved} of {n} units ({saved} were already done)" in capsys.readouterr().out
    assert main(["study", "run", str(spec_path), "--no-progress"]) == 0  # a finished study says so
    assert f"nothing to do: all {n} units of this spec were already done" in capsys.readouterr().out


def test_ctrl_c_with_worker_processes(zoo_env, tmp_path, reference):
    """Ctrl-C reaches the whole process group: the workers stay quiet, the driver prints one line."""
    spec_path = _spec_file(tmp_path, batch_size=None, models=["zoo:tiny-mlp"])
    out = tmp_path / "out"
    proc = study_cli("run", str(spec_path), "--no-progress", "--executor", "process", "--workers", "2",
                     start_new_session=True)
    _wait_for_workers(proc)
    _wait_for_parts(out, 1, proc, timeout=30)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    saved = len(load_results(out))
    assert stderr.strip() == f"interrupted: {saved}/12 units saved; rerun the same command to resume"
    expected = run_study(small_spec(tmp_path / "serial", **SPEC, batch_size=None, models=["zoo:tiny-mlp"]),
                         progress=False)
    assert_same_table(run_study(small_spec(out, **SPEC, batch_size=None, models=["zoo:tiny-mlp"]), progress=False),
                      expected)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (root only) or None where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_prints_one_line_and_resumes_exactly(zoo_env, tmp_path, reference, small_disk, capsys, monkeypatch):
    if small_disk is not None:  # a real full disk: fill the tmpfs, leaving room for a few parts
        out = small_disk / "out"
        filler = small_disk / "filler"
        stat = os.statvfs(small_disk)
        filler.write_bytes(os.urandom(stat.f_bavail * stat.f_frsize - 48 * 1024))
    else:  # no mount allowed: the Parquet writer fails as a full disk does, after 5 parts
        out = tmp_path / "out"
        import pyarrow.parquet as pq
        real, calls = pq.write_table, []

        def write_table(*args, **kwargs):
            calls.append(1)
            if len(calls) > 5:
                raise OSError(28, "No space left on device")
            return real(*args, **kwargs)
        monkeypatch.setattr(pq, "write_table", write_table)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(small_spec(str(out), **SPEC)))
    assert main(["study", "run", str(spec_path), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    saved = len(load_results(out))
    assert 0 < saved < len(reference)
    assert err == (f"stopped (disk full: No space left on device): {saved}/{len(reference)} units saved; "
                   "free some space, then rerun the same command to resume")
    assert not list((out / "parts").glob(".*.tmp"))  # no half-written part left behind
    if small_disk is not None:
        filler.unlink()
    else:
        monkeypatch.undo()
    assert main(["study", "run", str(spec_path), "--no-progress"]) == 0
    assert_same_table(load_results(out), reference)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_get_the_users_permissions(zoo_env, tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "out"
        run_study(small_spec(out, **TINY), progress=False)
        files = [out / "study.json", out / "study.lock", *part_files(out)]
        # and a claim file, as a run in progress has them
        claims = store.Claims(out)
        claims.claim(("m", "t", "zero", "a0.h0", 0))
        files += list((out / "claims").iterdir())
        claims.release_all()
    finally:
        os.umask(old)
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: oct(0o666 & ~umask) for f in files}


def test_compaction_merges_parts_and_keeps_each_unit_once(zoo_env, tmp_path):
    out = tmp_path / "out"
    first = run_study(small_spec(out, **TINY), progress=False)
    assert [p.name[:8] for p in part_files(out)] == ["results-"]
    # A crash between committing a part and marking its claims can leave a unit twice: the
    # next compaction removes the repeat from disk.
    store.commit_rows(out, first.iloc[:2].to_dict("records"))
    with store.FolderLock(out) as lock:
        lock.shared()
        assert store.compact(out, lock)
    assert len(part_files(out)) == 1 and len(pd.read_parquet(part_files(out)[0])) == 4
    # Compaction waits for the last active run: a folder held by another run is left as it is.
    store.commit_rows(out, first.iloc[:1].to_dict("records"))
    with store.FolderLock(out) as other, store.FolderLock(out) as mine:
        other.shared()
        mine.shared()
        assert not store.compact(out, mine, wait_s=0.2) and len(part_files(out)) == 2


def test_dead_worker_process_prints_one_line_and_resumes(zoo_env, tmp_path):
    spec = dict(batch_size=None, models=["zoo:tiny-mlp"])
    spec_path = _spec_file(tmp_path, **spec)
    out = tmp_path / "out"
    proc = study_cli("run", str(spec_path), "--no-progress", "--executor", "process", "--workers", "2")
    workers = _wait_for_workers(proc)
    os.kill(workers[0], signal.SIGKILL)  # while workers are still starting up or running chunks
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    saved = len(load_results(out))
    assert stderr.strip().startswith("stopped (a worker process died") and "\n" not in stderr.strip()
    assert stderr.strip().endswith(f": {saved}/12 units saved; rerun the same command to resume")
    expected = run_study(small_spec(tmp_path / "serial", **SPEC, **spec), progress=False)
    assert_same_table(run_study(small_spec(out, **SPEC, **spec), progress=False), expected)
