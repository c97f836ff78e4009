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
