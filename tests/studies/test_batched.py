"""Batched units (many per forward pass, from the ablated layer) equal the unit-by-unit path."""

import pandas as pd
import pytest
import torch
from study_helpers import assert_same_table, small_spec

from circuitkit.studies import StudySpec, UnitRunner, plan_units, validate

TARGETS = {"every_head": True, "every_mlp": True, "head_sets": {"across": ["a0.h1", "a1.h0", "m1"], "last": ["a1.h0", "a1.h1"]},
           "top_k_from": {"score": "previous_token", "k": 2}}


def _double(runner: UnitRunner, spec: StudySpec) -> UnitRunner:
    """Float64 models: the two paths then agree to ~1e-12, well below float32's batch-shape noise."""
    for model_spec in spec.models:
        model = runner.model(model_spec).to(torch.float64)
        model.cfg.dtype = torch.float64
    return runner


def _both(spec: StudySpec, double: bool = True):
    units = plan_units(spec, validate(spec))
    slow_runner, runner = UnitRunner(spec, batched=False), UnitRunner(spec)
    if double:
        _double(slow_runner, spec), _double(runner, spec)
    slow = pd.DataFrame(slow_runner.run_many(units))
    fast = pd.DataFrame(runner.run_many(units))
    return slow, fast, runner, units


@pytest.mark.parametrize("batch_size", [None, 4, 12])  # all prompts at once; chunks of 4 of 6 prompts; 2 units a pass
def test_batched_equals_unit_by_unit(zoo_env, tmp_path, batch_size):
    spec = StudySpec.from_dict(small_spec(tmp_path / "out", models=["zoo:tiny-mlp"], targets=TARGETS,
                                          metrics=["logit_diff", "accuracy", "kl"], batch_size=batch_size,
                                          tasks=[{"name": "ioi", "params": {"n_prompts": 6}}]))
    slow, fast, _, units = _both(spec)
    assert len(fast) == len(units) == 3 * (4 + 2 + 2 + 1)
    assert_same_table(slow, fast, rtol=1e-9, atol=1e-10)
    if batch_size == 4:  # float32, as studies run: equal to float32 noise (test_rows_match_ablate: vs ablate)
        slow, fast, _, _ = _both(spec, double=False)
        assert_same_table(slow, fast, rtol=1e-4, atol=1e-5)
    assert fast["kl"].abs().max() > 0 and (fast["logit_diff"] != fast["logit_diff_clean"]).all()  # ablations bite


def test_logit_diff_only_and_induction(zoo_env, tmp_path):
    """With the logit difference alone only two logit columns are computed; the numbers agree."""
    spec = StudySpec.from_dict(small_spec(tmp_path / "out", models=["zoo:tiny-attn"], metrics=["logit_diff"],
                                          tasks=[{"name": "induction", "params": {"n_prompts": 5, "seq_len": 6}}],
                                          batch_size=None))
    slow, fast, _, _ = _both(spec)
    assert_same_table(slow, fast, rtol=1e-9, atol=1e-10)


def test_passes_start_at_the_ablated_layer(zoo_env, tmp_path):
    """Layer-1 units never run layer 0, and k units share one pass."""
    spec = StudySpec.from_dict(small_spec(tmp_path / "out", models=["zoo:tiny-mlp"], ablations=["mean"], batch_size=None,
                                          tasks=[{"name": "ioi", "params": {"n_prompts": 6}}], metrics=["logit_diff"]))
    units = [u for u in plan_units(spec, validate(spec)) if u.target.startswith("a1.")]
    runner = UnitRunner(spec)
    runner.clean_run(units[0].model, units[0].task, units[0].seed)  # the cached clean run (counted apart)
    model = runner.model(units[0].model)
    calls = {"blocks.0.hook_resid_pre": 0, "blocks.1.hook_resid_pre": 0}

    def count(act, hook):
        calls[hook.name] += 1
    for name in calls:
        model.add_hook(name, count, is_permanent=True)
    try:
        rows = runner.run_many(units)
    finally:
        model.reset_hooks(including_permanent=True)
    assert len(rows) == 2 and calls == {"blocks.0.hook_resid_pre": 0, "blocks.1.hook_resid_pre": 1}
