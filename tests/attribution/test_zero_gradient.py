"""Gradient estimators refuse all-zero scores and name the cause: a metric whose gradient is 0 at
the clean run (the L2 distance to the clean output), or a corruption that changes nothing."""

import pytest
import torch
from model_factory import make_model

from circuitkit import Task, attribution_patching, eap, eap_ig, exact_edge_patching


@pytest.fixture(scope="module")
def model(word_tokenizer):
    return make_model(word_tokenizer, n_layers=1, seed=3)


def _tasks(model):
    g = torch.Generator().manual_seed(0)
    v = model.cfg.d_vocab
    clean, corrupted = torch.randint(0, v, (3, 6), generator=g), torch.randint(0, v, (3, 6), generator=g)
    with torch.no_grad():
        clean_out = model(clean)[:, -1]
    distance = Task("l2", clean, corrupted, [0, 0, 0], metric="mse", data={"target": clean_out})
    return distance, clean, corrupted


def test_a_metric_with_zero_gradient_at_the_clean_run_is_refused_with_the_fix(model):
    distance, _, _ = _tasks(model)
    for run in (lambda: eap(model, distance, progress=False),
                lambda: eap_ig(model, distance, steps=1, progress=False),
                lambda: attribution_patching(model, distance, progress=False)):
        with pytest.raises(ValueError, match=r"gradient of metric 'mse' is 0 at the clean run.*use eap_ig \(steps > 1"):
            run()
    # the fixes named do work: integrated gradients and exact patching see the effect
    assert eap_ig(model, distance, steps=3, progress=False).values.abs().max() > 0
    assert exact_edge_patching(model, distance, ["input->a0.h0<v>"], progress=False).values.abs().max() > 0


def test_an_ablation_that_changes_nothing_is_named(model):
    _, clean, _ = _tasks(model)
    same = Task("same", clean, clean, [1, 2, 3], [4, 5, 6])
    with pytest.raises(ValueError, match="every score is about 0 .below 1e-05. though the metric.s gradient is not: the ablation source"):
        eap(model, same, ablation="corrupted", progress=False)
