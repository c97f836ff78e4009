"""Spec builders shared by the study tests."""


def small_spec(out, **overrides) -> dict:
    spec = {
        "models": ["zoo:tiny-attn", "zoo:tiny-mlp"],
        "tasks": [{"name": "induction", "params": {"n_prompts": 6, "seq_len": 5}},
                  {"name": "ioi", "params": {"n_prompts": 6}}],
        "ablations": ["zero", "mean", "resample"],
        "targets": {"every_head": True},
        "metrics": ["logit_diff", "accuracy"],
        "seeds": [0],
        "batch_size": 4,
        "output_dir": str(out),
    }
    spec.update(overrides)
    return spec


def assert_same_table(a, b, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Same unit keys (no loss, no duplicates) and the same values (``seconds`` aside)."""
    import numpy as np
    import pandas as pd

    from circuitkit.studies.store import UNIT_KEY

    assert not a.duplicated(list(UNIT_KEY)).any() and not b.duplicated(list(UNIT_KEY)).any()
    a, b = (t.drop(columns="seconds").sort_values(list(UNIT_KEY)).reset_index(drop=True) for t in (a, b))
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a.select_dtypes(exclude="number"), b.select_dtypes(exclude="number"))
    np.testing.assert_allclose(a.select_dtypes("number").to_numpy(float), b.select_dtypes("number").to_numpy(float),
                               rtol=rtol, atol=atol)


def study_cli(*args, **kw):
    """``circuitkit study ARGS`` in a subprocess importing this checkout (stdout / stderr piped)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "circuitkit.cli", "study", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# --- dying runs, for the fault tests -------------------------------------------------------------

FAULT_OPS = ("replace", "pwrite", "unlink", "rmtree")  # what a run does to the store, where it may die


def faulty_run(spec: dict, zoo: str, fault: tuple | None = None, expect_rows: int | None = None) -> None:
    """Run ``spec`` in this (forked) process and, with ``fault = (op, n, when)``, die by SIGKILL
    just ``"before"`` or ``"after"`` its ``n``-th call of ``op`` (`FAULT_OPS`: the rename of a
    part, study.json or the compacted table; the write of a claim's done mark; the removal of a
    file, as compaction removes parts; the removal of the claims folder), as ``kill -9`` would
    leave it. Exit status 0: the run returned; 3: it returned a table without ``expect_rows`` units."""
    import os
    import pathlib
    import shutil
    import signal
    import threading
    import warnings

    import torch

    os.environ["CIRCUITKIT_ZOO_PATH"] = zoo
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm

    tqdm.set_lock(threading.RLock())  # not a multiprocessing lock: a killed run would leak its semaphore
    if fault is not None:
        op, n, when = fault
        calls = [0]
        owner, attr = {"replace": (os, "replace"), "pwrite": (os, "pwrite"), "unlink": (pathlib.Path, "unlink"),
                       "rmtree": (shutil, "rmtree")}[op]
        real = getattr(owner, attr)

        def dying(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kwargs)
            if calls[0] == n and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(owner, attr, dying)
    from circuitkit.studies import run_study
    from circuitkit.studies.store import UNIT_KEY

    table = run_study(spec, progress=False)
    if expect_rows is not None and (len(table) != expect_rows or table.duplicated(list(UNIT_KEY)).any()):
        os._exit(3)


def forkserver_context():
    """Processes forked from a server that has imported torch and circuitkit once: a study run
    starts in milliseconds instead of an interpreter's seconds."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["study_helpers", "torch", "circuitkit.studies"])
    return ctx
