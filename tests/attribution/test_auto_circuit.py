"""circuitkit's EAP, mask-interpolation EAP-IG and token-wise-mean-of-corrupted ablation against
auto-circuit's own numbers (``data/auto_circuit_scores.json``, written by auto-circuit 1.0.1 with
``make_auto_circuit_fixture.py`` beside this file).

auto-circuit sums, over its ``integrated_grad_samples + 1`` mask values, the mask gradients of its
loss ``-logit_diff``; circuitkit averages the gradients of the metric over the same ``steps``
values. So auto-circuit = ``-steps`` x circuitkit, edge by edge.
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import circuitkit as ck

ORACLE = json.loads((Path(__file__).parent / "data" / "auto_circuit_scores.json").read_text())
RUNS = {  # fixture key -> (circuitkit ablation, mask-IG steps or None for EAP)
    "eap-corrupted": ("corrupted", None),
    "mask-ig-corrupted": ("corrupted", ORACLE["models"]["ioi-trained"]["integrated_grad_samples"] + 1),
    "mask-ig-mean-corrupted": ("mean-corrupted", ORACLE["models"]["ioi-trained"]["integrated_grad_samples"] + 1),
}


@pytest.fixture(scope="module", params=sorted(ORACLE["models"]))
def model_and_task(request):
    name, found = request.param, ORACLE["models"][request.param]
    model = ck.load_model(f"zoo:{name}")
    task = ck.zoo_task(name, model).subset(torch.tensor(found["rows"]))
    cut = found["length"]
    assert bool((task.answer_pos.reshape(len(task), -1)[:, 0] == cut - 1).all())  # auto-circuit reads the last token
    return model, dataclasses.replace(task, clean=task.clean[:, :cut], corrupted=task.corrupted[:, :cut]), found


@pytest.mark.parametrize("run", sorted(RUNS))
def test_edge_scores_equal_auto_circuits(model_and_task, run):
    model, task, found = model_and_task
    ablation, steps = RUNS[run]
    if steps is None:
        scores = ck.eap(model, task, ablation=ablation, progress=False)
        factor = -1.0
    else:
        scores = ck.eap_ig(model, task, steps=steps, ablation=ablation, interpolate="mask", progress=False)
        factor = -float(steps)
    theirs = found["scores"][run]
    assert set(scores.labels) == set(theirs)  # the same edge graph, q / k / v apart
    ours = torch.tensor([factor * float(scores[e]) for e in theirs])
    expected = torch.tensor(list(theirs.values()))
    scale = float(expected.abs().max())
    assert scale > 1.0
    assert float((ours - expected).abs().max()) <= 1e-4 * scale


def test_mask_ig_is_eap_at_one_step_and_complete_with_many(model_and_task):
    """steps=1 is the gradient at the clean run (EAP); summed over every edge, the mask path's
    integral is metric(every edge ablated) - metric(clean), approached as steps grow."""
    from circuitkit.ablation.edges import ablation_source, run_with_edges

    model, task, _ = model_and_task
    eap = ck.eap(model, task, ablation="mean-corrupted", progress=False)
    one = ck.eap_ig(model, task, steps=1, ablation="mean-corrupted", interpolate="mask", progress=False)
    assert torch.allclose(one.values, eap.values, atol=1e-5 * float(eap.values.abs().max()))
    with torch.no_grad():
        everything = float(task.score(run_with_edges(model, task.clean, [], ablation_source(model, task, "mean-corrupted"))))
        clean = float(task.score(model(task.clean)))
    errors = [abs(float(ck.eap_ig(model, task, steps=s, ablation="mean-corrupted", interpolate="mask",
                                  progress=False).values.sum()) - (everything - clean)) for s in (3, 9, 25)]
    # an average over points 0..1 inclusive: the error shrinks about as 1 / steps
    assert errors[2] < errors[1] < errors[0] and errors[2] < 0.06 * abs(everything - clean)


def test_mean_corrupted_is_the_corrupted_prompts_mean(model_and_task):
    from circuitkit.ablation.edges import ablation_source, node_outputs

    model, task, _ = model_and_task
    source = ablation_source(model, task, "mean-corrupted")
    outputs = node_outputs(model, task.corrupted)
    assert set(source) == set(outputs)
    for node, value in outputs.items():
        assert source[node].shape[0] == 1 and torch.allclose(source[node][0], value.mean(0), atol=1e-6)
