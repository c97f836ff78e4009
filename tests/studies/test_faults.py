"""The faults of issue 37, each reproduced: an edited input refused, a torn part healed in one rerun,
--force-new safe with links, stray and foreign files quarantined, a corrupt study.json, storage
failures at start / mid-run / at compaction as one line, memory checked before any unit, and
process workers that die with their driver."""

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from study_helpers import assert_same_table, small_spec, study_cli

from circuitkit.cli import main
from circuitkit.errors import InputError, RunError
from circuitkit.studies import (
    SpecError,
    StudyInterrupted,
    StudySpec,
    identity,
    load_results,
    run_study,
    store,
)
from circuitkit.studies.executors import UnitQueue, worker_warning
from circuitkit.studies.store import part_files

# 12 units (2 ablations x (4 heads + 2 MLPs)), each committed as its own part (4 prompts fill a pass)
SMALL = dict(models=["zoo:tiny-mlp"], tasks=[{"name": "induction", "params": {"n_prompts": 4, "seq_len": 5}}],
             ablations=["zero", "mean"], targets={"every_head": True, "every_mlp": True}, metrics=["logit_diff"],
             seeds=[0], batch_size=4)


@pytest.fixture(scope="module")
def reference(study_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults-reference") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIRCUITKIT_ZOO_PATH", str(study_zoo))
        return run_study(dict(SMALL, output_dir=str(out)), progress=False)


def _spec_file(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "output_dir": "out", **changes}))
    return path


@contextlib.contextmanager
def _interrupted_after(n: int):
    """Ctrl-C right after the ``n``-th part is committed (the run's claims stay marked done)."""
    real, calls = UnitQueue.commit, []

    def commit(self, rows):
        real(self, rows)
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(UnitQueue, "commit", commit)
        yield


@pytest.fixture
def mounts(tmp_path):
    """``mount(path, size)``: a tmpfs at ``path`` (root only; False where mounting is not allowed);
    ``readonly(path, on)`` remounts it. All are unmounted at the end."""
    done = []

    def mount(path: Path, size: str = "1m") -> bool:
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                               capture_output=True).returncode != 0:
            return False
        done.append(path)
        return True

    def readonly(path: Path, on: bool = True) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(path)], check=True)

    mount.readonly = readonly
    yield mount
    for path in reversed(done):
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte."""
    stat = os.statvfs(folder)
    with open(folder / "filler", "wb", buffering=0) as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * (stat.f_bavail * stat.f_frsize))
        for size in (4096, 1):
            while True:
                handle.write(b"\0" * size)


# --- identity -------------------------------------------------------------------------------------

def _task_file(path: Path, swap: bool = False) -> None:
    prompts = []
    for i in range(6):
        a, b = 10 + i, 20 + i
        answer, wrong = (b, a) if swap else (a, b)
        prompts.append({"clean": [3, a, 4, b, 3], "corrupted": [3, b, 4, a, 3], "answers": [answer],
                        "wrong_answers": [wrong]})
    path.write_text(json.dumps({"name": "pairs", "prompts": prompts}))


def test_an_edited_task_file_is_refused_naming_it(zoo_env, tmp_path, capsys):
    study = tmp_path / "study"
    study.mkdir()
    _task_file(study / "task.json")
    spec_path = _spec_file(study, tasks=[{"file": "task.json"}], batch_size=6)
    with _interrupted_after(3):
        assert main(["study", "run", str(spec_path), "--no-progress"]) == 130
    capsys.readouterr()
    _task_file(study / "task.json", swap=True)  # the answers swapped between runs
    assert main(["study", "run", str(spec_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "./task.json changed (sha256" in err and "--force-new" in err and "\n" not in err, err
    assert len(load_results(study / "out")) == 3  # refused before touching anything
    assert main(["study", "run", str(spec_path), "--no-progress", "--force-new"]) == 0
    fresh = run_study({**SMALL, "tasks": [{"file": str(study / "task.json")}], "batch_size": 6,
                       "output_dir": str(tmp_path / "clean")}, progress=False)
    assert_same_table(load_results(study / "out"), fresh)  # every row from the edited file


def test_moving_a_study_folder_is_not_a_change(zoo_env, tmp_path, capsys):
    """A study folder holding its spec, a task file, a model folder (Hugging Face) and its results."""
    from circuitkit.models.hf_export import export_zoo_hf

    first = tmp_path / "a"
    first.mkdir()
    _task_file(first / "task.json")
    export_zoo_hf("tiny-mlp", first / "my-model")
    _spec_file(first, models=["./my-model", "zoo:tiny-mlp"], tasks=[{"file": "task.json"}], batch_size=6)
    assert main(["study", "run", str(first / "spec.yaml"), "--no-progress"]) == 0
    table = load_results(first / "out")
    assert sorted(set(table.model)) == ["./my-model", "zoo:tiny-mlp"]  # named as the spec names them
    moved = tmp_path / "elsewhere" / "b"
    shutil.move(first, moved)
    capsys.readouterr()
    assert main(["study", "run", str(moved / "spec.yaml"), "--no-progress"]) == 0
    assert "nothing to do: all 24 units" in capsys.readouterr().out
    assert_same_table(load_results(moved / "out"), table)
    config = moved / "my-model" / "config.json"
    config.write_text(config.read_text() + "\n")  # the model folder edited
    assert main(["study", "run", str(moved / "spec.yaml"), "--no-progress"]) == 2
    assert "./my-model/config.json changed" in capsys.readouterr().err


def test_model_folders_zoo_files_and_versions_are_part_of_the_identity(zoo_env, tmp_path, monkeypatch):
    for root in (tmp_path / "a", tmp_path / "b"):
        (root / "my-model").mkdir(parents=True)
        (root / "my-model" / "config.json").write_text('{"n_layers": 2}')
        (root / "my-model" / "model.safetensors").write_bytes(b"weights")
        (root / "my-model" / ".git").mkdir()  # hidden: not read
        (root / "my-model" / ".git" / "HEAD").write_text(str(root))
    data = small_spec("out", models=["./my-model", "zoo:tiny-attn"])
    spec_a = StudySpec.from_dict(data, base_dir=tmp_path / "a")
    spec_b = StudySpec.from_dict(data, base_dir=tmp_path / "b")
    assert spec_a.relative(spec_a.models[0]) == "./my-model"  # how results and the identity name it
    a, b = identity.study_record(spec_a, 1), identity.study_record(spec_b, 1)
    assert a["identity"] == b["identity"]  # the same study, in another folder
    assert set(a["inputs"]) == {"./my-model/config.json", "./my-model/model.safetensors", "zoo:tiny-attn/card.json",
                                "zoo:tiny-attn/model.safetensors", "zoo:tiny-attn/tokenizer.json"}
    (tmp_path / "b" / "my-model" / "model.safetensors").write_bytes(b"other weights")
    changed = identity.study_record(spec_b, 1)
    assert changed["identity"] != a["identity"]
    assert "./my-model/model.safetensors changed" in identity.describe_change(a, changed, Path("out"))
    zoo = tmp_path / "zoo"
    shutil.copytree(zoo_env, zoo)
    monkeypatch.setenv("CIRCUITKIT_ZOO_PATH", str(zoo))
    (zoo / "tiny-attn" / "tokenizer.json").write_text((zoo / "tiny-attn" / "tokenizer.json").read_text() + " ")
    assert "zoo:tiny-attn/tokenizer.json changed" in identity.describe_change(a, identity.study_record(spec_a, 1), Path("o"))
    monkeypatch.setenv("CIRCUITKIT_ZOO_PATH", str(zoo_env))
    monkeypatch.setattr(identity, "versions", lambda: {"circuitkit": a["versions"]["circuitkit"], "transformer_lens": "9.9"})
    message = identity.describe_change(a, identity.study_record(spec_a, 1), Path("o"))
    assert "now circuitkit" in message and "transformer_lens 9.9" in message and "--force-new" in message


def test_a_study_made_before_identities_is_refused_with_the_reason(zoo_env, tmp_path):
    out = tmp_path / "out"
    run_study(dict(SMALL, output_dir=str(out)), progress=False)
    info = json.loads((out / "study.json").read_text())
    for key in ("identity", "inputs", "versions", "store_version"):
        info.pop(key)
    (out / "study.json").write_text(json.dumps(info))
    with pytest.raises(SpecError, match="older circuitkit that did not record the content of its inputs.*--force-new"):
        run_study(dict(SMALL, output_dir=str(out)), progress=False)


# --- healing --------------------------------------------------------------------------------------

def test_a_claim_counts_as_done_only_while_its_part_exists(tmp_path):
    (tmp_path / "parts").mkdir()
    claims = store.Claims(tmp_path)
    key = ("zoo:tiny-mlp", "induction", "zero", "a0.h0", 0)
    assert claims.claim(key) == claims.MINE
    part = "part-" + "0" * 20 + ".parquet"
    (tmp_path / "parts" / part).write_bytes(b"x")
    claims.finish([key], part)
    assert claims.claim(key) == claims.DONE
    (tmp_path / "parts" / part).rename(tmp_path / "gone")  # quarantined
    assert claims.claim(key) == claims.MINE  # taken over: its unit runs again
    claims.release_all()
    (claims.dir / store.unit_id(key)).write_bytes(b"done")  # an older version's mark names no part
    assert claims.claim(key) == claims.MINE
    claims.release_all()


@pytest.mark.parametrize("report_first", [False, True], ids=["rerun", "report-then-rerun"])
def test_after_a_truncated_part_one_rerun_gives_every_row(zoo_env, tmp_path, reference, capsys, report_first):
    spec_path = _spec_file(tmp_path)
    out = tmp_path / "out"
    with _interrupted_after(5):
        assert main(["study", "run", str(spec_path), "--no-progress"]) == 130
    assert len(list((out / "claims").iterdir())) == 5  # marked done, each naming its part
    torn = part_files(out)[2]
    torn.write_bytes(torn.read_bytes()[:100])
    capsys.readouterr()
    with pytest.warns(UserWarning, match=rf"{torn.name} is unreadable .*will run again"):
        if report_first:  # `study report` reads first and quarantines the part (once it crashed)
            assert main(["study", "report", str(out), "--out", str(tmp_path / "report")]) == 0
        assert main(["study", "run", str(spec_path), "--no-progress"]) == 0
    assert "ran 8 of 12 units (4 were already done); 12 rows" in capsys.readouterr().out
    assert_same_table(load_results(out), reference)
    assert (out / "quarantine" / torn.name).exists()


def test_stray_and_foreign_files_in_parts_are_quarantined(zoo_env, tmp_path, reference, capsys):
    other = run_study(dict(SMALL, seeds=[1], output_dir=str(tmp_path / "other")), progress=False)
    assert len(other) == 12
    spec_path = _spec_file(tmp_path)
    out = tmp_path / "out"
    with _interrupted_after(4):
        assert main(["study", "run", str(spec_path), "--no-progress"]) == 130
    parts = out / "parts"
    stray = pd.DataFrame({"x": [1.5, float("nan")], "seed": [None, 2.0]})
    stray.to_parquet(parts / "stray.parquet")  # once: "cannot convert float NaN to integer"
    stray.to_parquet(parts / f"part-{'1' * 20}.parquet")  # named like a part, but no unit columns
    foreign = parts / f"part-{'2' * 20}.parquet"
    shutil.copy(part_files(tmp_path / "other")[0], foreign)  # a valid part of another study
    (parts / "notes.txt").write_text("odd results\n")
    with pytest.warns(UserWarning) as warned:
        assert main(["study", "run", str(spec_path), "--no-progress"]) == 0
    messages = " | ".join(str(w.message) for w in warned)
    assert "stray.parquet is a stray (not a file the study store writes)" in messages
    assert "notes.txt is a stray" in messages
    assert f"part-{'1' * 20}.parquet is not a part of this study (it has no column model" in messages
    assert f"{foreign.name} is not a part of this study (it belongs to the study" in messages
    assert_same_table(load_results(out), reference)
    assert sorted(p.name for p in (out / "quarantine").iterdir()) == sorted(
        ["stray.parquet", "notes.txt", f"part-{'1' * 20}.parquet", foreign.name])
    stray.to_parquet(parts / "again.parquet")  # `study report` quarantines it too, no traceback
    with pytest.warns(UserWarning, match="again.parquet is a stray"):
        assert main(["study", "report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_corrupt_study_json_has_a_way_out(zoo_env, tmp_path, reference):
    out = tmp_path / "out"
    spec = dict(SMALL, output_dir=str(out))
    run_study(spec, progress=False)
    (out / "study.json").write_bytes(b"\x00\xff{garbage")
    with pytest.raises(InputError, match=r"study.json is not valid JSON .*run the study's spec again.*--force-new"):
        load_results(out)
    with pytest.warns(UserWarning, match="rebuilt it from this spec .*the results are kept"):
        again = run_study(spec, progress=False)  # every part carries this spec's identity
    assert again.attrs["units_run"] == 0
    assert_same_table(again, reference)
    (out / "study.json").write_text("[]")
    changed = dict(spec, seeds=[3])
    with pytest.raises(store.CorruptStudyFile, match=r"a JSON list, not the study's record.*--force-new"):
        run_study(changed, progress=False)  # the parts are another spec's: not rebuilt
    with store.FolderLock(out) as other:
        other.shared()  # another run holds the folder
        with pytest.raises(RunError, match="in use by another run"):
            run_study(changed, force_new=True, progress=False)
    fresh = run_study(changed, force_new=True, progress=False)
    assert set(fresh.seed) == {3} and len(fresh) == 12


# --- --force-new ----------------------------------------------------------------------------------

def test_force_new_never_follows_a_symlinked_parts(zoo_env, tmp_path, reference):
    old = tmp_path / "old"
    run_study(dict(SMALL, output_dir=str(old)), progress=False)
    before = sorted(p.name for p in (old / "parts").iterdir())
    new = tmp_path / "new"
    new.mkdir()
    (new / "parts").symlink_to(old / "parts")  # a study folder whose parts are another study's
    shutil.copy(old / "study.json", new / "study.json")
    changed = dict(SMALL, seeds=[7], output_dir=str(new))
    with pytest.raises(SpecError, match="holds results of a different spec"):
        run_study(changed, progress=False)
    with pytest.warns(UserWarning, match=r"parts was a symbolic link to .*old/parts; --force-new removed the link "
                                         r"and left .* untouched"):
        fresh = run_study(changed, force_new=True, progress=False)
    assert set(fresh.seed) == {7} and len(fresh) == 12  # really started over
    assert (new / "parts").is_dir() and not (new / "parts").is_symlink()
    assert sorted(p.name for p in (old / "parts").iterdir()) == before
    assert_same_table(load_results(old), reference)  # the old study is untouched


def test_force_new_fails_loudly_when_it_cannot_remove(zoo_env, tmp_path, mounts):
    out = tmp_path / "out"
    run_study(dict(SMALL, output_dir=str(out)), progress=False)
    stuck = out / "quarantine"
    if mounts(stuck):  # a read-only file system inside the study folder
        (stuck / "torn.parquet").write_bytes(b"x")
        mounts.readonly(stuck)
    elif os.geteuid() != 0:
        stuck.mkdir()
        (stuck / "torn.parquet").write_bytes(b"x")
        stuck.chmod(0o500)
    else:
        pytest.skip("root without mount: nothing here can refuse a removal")
    changed = dict(SMALL, seeds=[7], output_dir=str(out))
    with pytest.raises(RunError, match=r"--force-new cannot remove .*quarantine.* \((Read-only file system|Permission "
                                       r"denied)\); the old results are not all gone"):
        run_study(changed, force_new=True, progress=False)
    if os.geteuid() == 0:
        mounts.readonly(stuck, False)
    else:
        stuck.chmod(0o700)
    (stuck / "torn.parquet").unlink()
    if os.path.ismount(stuck):
        subprocess.run(["umount", "-l", str(stuck)], check=True)
    assert set(run_study(changed, force_new=True, progress=False).seed) == {7}


# --- storage errors -------------------------------------------------------------------------------

def test_a_disk_full_at_start_gives_the_one_line_message(zoo_env, tmp_path, reference, mounts, capsys, monkeypatch):
    disk = tmp_path / "disk"
    out = disk / "out"
    if mounts(disk):
        _fill(disk)
    else:  # no mount allowed: the first write fails as a full disk does
        real = store.write_study_file

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(store, "write_study_file", full)
    spec_path = _spec_file(tmp_path, output_dir=str(out))
    assert main(["study", "run", str(spec_path), "--no-progress"]) == 1
    assert capsys.readouterr().err.strip() == ("stopped (disk full: No space left on device): 0/12 units saved; free "
                                               "some space, then rerun the same command to resume")
    if (disk / "filler").exists():
        (disk / "filler").unlink()
    else:
        monkeypatch.setattr(store, "write_study_file", real)
    assert main(["study", "run", str(spec_path), "--no-progress"]) == 0
    assert_same_table(load_results(out), reference)


def test_an_unwritable_parts_folder_mid_run_gives_the_one_line_message(zoo_env, tmp_path, reference, mounts, capsys,
                                                                       monkeypatch):
    out = tmp_path / "out"
    parts = out / "parts"
    mounted = mounts(parts, "10m")
    real, calls = UnitQueue.commit, []

    def commit(self, rows):
        real(self, rows)
        calls.append(1)
        if len(calls) == 3:  # the folder turns unwritable under the run
            if mounted:
                mounts.readonly(parts)
            elif os.geteuid() != 0:
                parts.chmod(0o555)
            else:
                monkeypatch.setattr(store, "commit_rows", lambda *a, **k: (_ for _ in ()).throw(
                    PermissionError(errno.EACCES, "Permission denied")))
    monkeypatch.setattr(UnitQueue, "commit", commit)
    spec_path = _spec_file(tmp_path)
    assert main(["study", "run", str(spec_path), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"stopped (cannot write a part into {parts}: ") and "\n" not in err, err
    assert err.endswith("): 3/12 units saved; fix that, then rerun the same command to resume"), err
    assert ("Read-only file system" if mounted else "Permission denied") in err
    monkeypatch.undo()
    monkeypatch.setenv("CIRCUITKIT_ZOO_PATH", str(zoo_env))
    if mounted:
        mounts.readonly(parts, False)
    else:
        parts.chmod(0o755)
    assert main(["study", "run", str(spec_path), "--no-progress"]) == 0
    assert_same_table(load_results(out), reference)


def test_a_storage_error_while_compacting_gives_the_one_line_message(zoo_env, tmp_path, reference, monkeypatch):
    out = tmp_path / "out"
    spec = dict(SMALL, output_dir=str(out))
    real = store.write_with

    def write_with(path, *args, **kwargs):
        if Path(path).name.startswith("results-"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)
    monkeypatch.setattr(store, "write_with", write_with)
    with pytest.raises(StudyInterrupted) as stopped:
        run_study(spec, progress=False)
    assert str(stopped.value).startswith(f"stopped (cannot compact {out / 'parts'}/results-")
    assert str(stopped.value).endswith("Permission denied): 12/12 units saved; fix that, then rerun the same command "
                                       "to resume")
    monkeypatch.setattr(store, "write_with", real)
    again = run_study(spec, progress=False)  # nothing left but the compaction
    assert again.attrs["units_run"] == 0 and [p.name[:8] for p in part_files(out)] == ["results-"]
    assert_same_table(again, reference)


# --- memory and workers ---------------------------------------------------------------------------

def test_a_study_that_cannot_fit_memory_is_refused_before_any_unit(zoo_env, tmp_path, monkeypatch):
    from circuitkit.studies import checks

    monkeypatch.setattr(checks, "machine_memory", lambda: 2**20)
    spec = dict(SMALL, tasks=[{"name": "induction", "params": {"n_prompts": 2000, "seq_len": 5}}], batch_size=None,
                output_dir=str(tmp_path / "out"))
    with pytest.raises(SpecError, match=r"model 'zoo:tiny-mlp' .*: its units need about [\d.,]+ MB of memory at once, "
                                        r"more than the 1 MB this machine has \(weights .*, the largest forward pass "
                                        r".* for tasks\[0\] \(induction\): 2,000 prompts of \d+ tokens\); lower "
                                        r"params.n_prompts, set a smaller batch_size"):
        run_study(spec, progress=False)
    assert not (tmp_path / "out" / "parts").exists()


def test_more_workers_than_cpus_warn_with_the_memory(zoo_env, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_study(dict(SMALL, output_dir=str(out)), progress=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.warns(UserWarning, match=r"--workers 64 is more than the 2 CPUs of this machine: .* about [\d.,]+ MB "
                                         r"per worker \([\d.,]+ GB for 64; this machine has .*\); use --workers 2"):
        done = run_study(dict(SMALL, output_dir=str(out)), executor="process", workers=64, progress=False)
    assert done.attrs["units_run"] == 0  # a finished study: no worker was started
    assert worker_warning("process", 2, []) is None and worker_warning("serial", 64, []) is None


# --- process workers and their driver -------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")  # a zombie has exited


def _workers(pid: int) -> list[int]:
    children = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in children.splitlines()
            if "spawn_main" in line and "resource_tracker" not in line]


def test_killing_the_driver_leaves_no_worker_alive(zoo_env, tmp_path):
    """``kill -9`` while the workers still import torch, a plain ``kill`` while they compute: within
    5 s no worker is left (each asked Linux for SIGKILL when its parent dies, and watches it)."""
    runs = {}
    for sig in (signal.SIGKILL, signal.SIGTERM):
        spec_path = _spec_file(tmp_path / sig.name, tasks=[{"name": "ioi", "params": {"n_prompts": 6}}, SMALL["tasks"][0]],
                               ablations=["zero", "mean", "resample"], seeds=[0, 1, 2, 3], batch_size=None)
        runs[sig] = study_cli("run", str(spec_path), "--no-progress", "--executor", "process", "--workers", "2",
                              start_new_session=True)
    workers: dict = {}
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(workers) < 2:
            for sig, proc in runs.items():
                if sig in workers or proc.poll() is not None:
                    continue
                found = _workers(proc.pid)
                ready = len(found) == 2 and (sig == signal.SIGKILL or part_files(tmp_path / sig.name / "out"))
                if ready:
                    workers[sig] = found
                    proc.send_signal(sig)
            time.sleep(0.02)
        for sig, proc in runs.items():
            proc.wait(timeout=60)
            assert sig in workers and proc.returncode != 0, f"{sig.name}: the driver finished before it was killed"
        begin = time.time()
        left = [pid for found in workers.values() for pid in found]
        while left and time.time() < begin + 5:
            left = [pid for pid in left if _alive(pid)]
            time.sleep(0.02)
        assert not left, f"workers {left} outlived their driver by 5 s"
        print(f"the workers were gone {time.time() - begin:.2f} s after their drivers")
        errors = {sig: proc.communicate(timeout=30)[1].strip() for sig, proc in runs.items()}
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                proc.kill()
        for found in workers.values():
            for pid in found:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    # a plain kill stops the run as Ctrl-C does: one line
    assert errors[signal.SIGTERM].startswith("interrupted: ") and "\n" not in errors[signal.SIGTERM], errors
