"""Randomized faults against the study store: rounds of runs killed at random points (mid-commit,
while marking claims, during compaction, at a random moment), runs side by side, torn parts, stray
and foreign files, stale claims and readers, each round ending with exactly the serial run's table.

Runs are forked from a server that has imported torch once (`forkserver_context`), so a run costs
a fraction of a second and ``kill -9`` is a real one. ``CIRCUITKIT_FAULT_ROUNDS`` /
``CIRCUITKIT_FAULT_SEED`` change the number of rounds (default 20) and the random seed.
"""

import os
import random
import signal
import time
import warnings

import pandas as pd
import pytest
from study_helpers import FAULT_OPS, assert_same_table, faulty_run, forkserver_context

from circuitkit.studies import load_results, run_study, store
from circuitkit.studies.store import UNIT_KEY, part_files

# 12 units (2 ablations x (4 heads + 2 MLPs)), one part each: 4 prompts fill a pass of batch_size 4
SPEC = dict(models=["zoo:tiny-mlp"], tasks=[{"name": "induction", "params": {"n_prompts": 4, "seq_len": 5}}],
            ablations=["zero", "mean"], targets={"every_head": True, "every_mlp": True}, metrics=["logit_diff"],
            seeds=[0], batch_size=4)
ROUNDS = int(os.environ.get("CIRCUITKIT_FAULT_ROUNDS", "20"))
SEED = int(os.environ.get("CIRCUITKIT_FAULT_SEED", "0"))


@pytest.fixture(scope="module")
def serial(study_zoo, tmp_path_factory):
    """The serial run's table, and a finished study of another spec (its parts are foreign here)."""
    root = tmp_path_factory.mktemp("fault-rounds")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIRCUITKIT_ZOO_PATH", str(study_zoo))
        reference = run_study(dict(SPEC, output_dir=str(root / "serial")), progress=False)
        run_study(dict(SPEC, seeds=[1], output_dir=str(root / "other")), progress=False)
    return reference, part_files(root / "other")[0]


def _start(ctx, spec, zoo, fault=None):
    proc = ctx.Process(target=faulty_run, args=(spec, zoo, fault, 12))
    proc.start()
    return proc


def _random_fault(rng):
    op = rng.choice(FAULT_OPS)
    n = {"replace": rng.randint(1, 14), "pwrite": rng.randint(1, 12), "unlink": rng.randint(1, 6), "rmtree": 1}[op]
    return op, n, rng.choice(["before", "after"])


def _check_complete(out, reference, what):
    """A run that returned left every unit, once, readable by any Parquet reader of the folder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same_table(load_results(out), reference), what
    on_disk = pd.read_parquet(out / "parts")
    assert not on_disk.duplicated(list(UNIT_KEY)).any(), f"{what}: a unit twice on disk"


def _tear(rng, out):
    """Truncate a random part (the run may be reading or removing it), then read as a reader does."""
    files = part_files(out)
    if files:
        victim = rng.choice(files)
        try:
            data = victim.read_bytes()
            with open(victim, "r+b") as handle:
                handle.truncate(int(len(data) * rng.uniform(0, 0.9)))
        except FileNotFoundError:  # compacted away meanwhile
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_results(out)


def _disturb(rng, out, foreign, log):
    """Damage or litter the folder between runs, as people and crashes do."""
    parts = out / "parts"
    choice = rng.choice(["truncate", "stray parquet", "foreign part", "stray file", "stray folder", "temp file",
                         "stale claim", "reader"])
    log.append(choice)
    if not parts.is_dir():
        return
    if choice == "truncate":
        files = part_files(out)
        if files:
            victim = rng.choice(files)
            data = victim.read_bytes()
            victim.write_bytes(data[: int(len(data) * rng.uniform(0, 0.9))])
    elif choice == "stray parquet":  # no unit key columns: once "cannot convert float NaN to integer"
        pd.DataFrame({"x": [1.5, float("nan")], "seed": [None, 2.0]}).to_parquet(parts / f"stray-{rng.randint(0, 99)}.parquet")
    elif choice == "foreign part":  # a valid part of another study, copied in under a part's name
        (parts / f"part-{rng.getrandbits(80):020x}.parquet").write_bytes(foreign.read_bytes())
    elif choice == "stray file":
        (parts / "notes.txt").write_text("results look odd\n")
    elif choice == "stray folder":
        (parts / "old").mkdir(exist_ok=True)
        (parts / "old" / "x.parquet").write_bytes(foreign.read_bytes())
    elif choice == "temp file":  # a half-written part of a run killed mid-write
        (parts / f".part-{rng.getrandbits(80):020x}.parquet.abc{rng.randint(0, 9)}.tmp").write_bytes(b"PAR1 half")
    elif choice == "stale claim":  # a claim marked done whose part is gone, or garbage
        claims = out / "claims"
        claims.mkdir(exist_ok=True)
        key = ("zoo:tiny-mlp", "induction", rng.choice(["zero", "mean"]), f"a{rng.randint(0, 1)}.h{rng.randint(0, 1)}", 0)
        mark = rng.choice([b"done part-" + b"0" * 20 + b".parquet", b"done", b"\x00garbage"])
        (claims / store.unit_id(key)).write_bytes(mark)
    elif choice == "reader":  # a `study report` between runs: reading quarantines what it cannot use
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_results(out)


def test_random_faults_end_with_the_serial_table(zoo_env, tmp_path, serial):
    reference, foreign = serial
    ctx = forkserver_context()
    zoo = str(zoo_env)
    begin = time.perf_counter()
    kinds: dict[str, int] = {}
    for round_ in range(ROUNDS):
        rng = random.Random(SEED * 1000 + round_)
        out = tmp_path / f"round{round_}"
        spec = dict(SPEC, output_dir=str(out))
        log: list[str] = []
        for _ in range(rng.randint(2, 4)):
            action = rng.choice(["killed run", "killed run", "runs side by side", "killed at a moment", "torn while running",
                                 "disturb"])
            log.append(action)
            kinds[action] = kinds.get(action, 0) + 1
            if action == "killed run":
                fault = _random_fault(rng)
                log.append(str(fault))
                procs = [_start(ctx, spec, zoo, fault)]
            elif action == "runs side by side":
                faults = [_random_fault(rng) if rng.random() < 0.7 else None for _ in range(2)]
                log.append(str(faults))
                procs = [_start(ctx, spec, zoo, f) for f in faults]
            elif action == "killed at a moment":
                procs = [_start(ctx, spec, zoo)]
                time.sleep(rng.uniform(0.05, 0.7))
                procs[0].kill()
            elif action == "torn while running":  # a part torn and a reader quarantining it, mid-run
                procs = [_start(ctx, spec, zoo)]
                time.sleep(rng.uniform(0.1, 0.6))
                _tear(rng, out)
            else:
                _disturb(rng, out, foreign, log)
                continue
            for proc in procs:
                proc.join(120)
                assert proc.exitcode in (0, -signal.SIGKILL), (
                    f"round {round_} {log}: a run failed ({proc.exitcode}; 3: it returned a table without every unit)")
                outcome = "killed" if proc.exitcode else "returned"
                kinds[outcome] = kinds.get(outcome, 0) + 1
            if any(p.exitcode == 0 for p in procs) and action != "torn while running":
                _check_complete(out, reference, f"round {round_} {log}")  # a run that returned left every unit
        final = _start(ctx, spec, zoo)  # the same command once more, undisturbed
        final.join(120)
        assert final.exitcode == 0, f"round {round_} {log}: the final run failed ({final.exitcode})"
        _check_complete(out, reference, f"round {round_} {log}")
        assert [p.name[:8] for p in part_files(out)] == ["results-"], f"round {round_} {log}: not compacted"
    print(f"{ROUNDS} rounds in {time.perf_counter() - begin:.1f} s: {kinds}")
