"""Position-resolved edge scores (``by_pos``): against the per-edge scores and a hand-written hook run."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from oracles import pattern_change_times_gradient

from circuitkit import attribution, names
from circuitkit.ablation import edges as g

pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.mark.parametrize("method", ["eap", "eap_ig inputs", "eap_ig activations", "eap_ig mask"])
def test_position_scores_sum_to_the_edge_scores(tiny_model, task, method):
    name, _, interpolate = method.partition(" ")
    kwargs = {"steps": 2, "interpolate": interpolate} if interpolate else {}
    fn = getattr(attribution, name)
    n_pos = task.clean.shape[1]
    for level in ("edge", "node"):
        plain = fn(tiny_model, task, progress=False, level=level, **kwargs)
        by_pos = fn(tiny_model, task, progress=False, level=level, by_pos=True, **kwargs)
        assert by_pos.meta["by_pos"] and not plain.meta["by_pos"]
        assert len(by_pos) == n_pos * len(plain)
        # labels: position-major, each the plain label at that position
        at = [names.edge_at(e, 2) if level == "edge" else names.with_pos(e, 2) for e in plain.labels]
        assert by_pos.labels[2 * len(plain): 3 * len(plain)] == at
        summed = by_pos.values.reshape(n_pos, -1).sum(0)
        assert torch.allclose(summed, plain.values, atol=1e-5 * max(1.0, float(plain.values.abs().max())))
        # and the positions differ: the split is not a copy
        assert by_pos.values.reshape(n_pos, -1).std(0).max() > 1e-4


def _hand_patched_metric(model, task, pos: int) -> float:
    """``a0.h1@pos -> a1.h2@pos<k>`` mean-ablated by hand: head a0.h1's output (z @ W_O) at ``pos``
    in a1.h2's key input at ``pos`` replaced by its mean over the prompts."""
    with torch.no_grad():
        _, cache = model.run_with_cache(task.clean, names_filter=lambda n: n == "blocks.0.attn.hook_z")
        out = cache["blocks.0.attn.hook_z"][:, :, 1] @ model.blocks[0].attn.W_O[1]  # [b, p, d_model]
        diff = out[:, pos] - out[:, pos].mean(0, keepdim=True)

        def hook(x, hook):
            x = x.clone()
            x[:, pos, 2] -= diff
            return x

        before, model.cfg.use_split_qkv_input = model.cfg.use_split_qkv_input, True
        try:
            with model.hooks(fwd_hooks=[("blocks.1.hook_k_input", hook)]):
                return float(task.score(model(task.clean)))
        finally:
            model.cfg.use_split_qkv_input = before


def test_exact_patching_of_one_edge_at_one_position_is_a_hook_run(tiny_model, task):
    pos = 3
    edge = names.edge_at(names.edge(names.head(0, 1), names.head(1, 2), "k"), pos)
    other = names.edge_at(names.edge(names.INPUT, names.mlp(1)), 5)
    exact = attribution.exact_edge_patching(tiny_model, task, edges=[edge, other], ablation="mean",
                                            progress=False, by_pos=True)
    with torch.no_grad():
        clean = float(task.score(tiny_model(task.clean)))
    assert exact[edge] == pytest.approx(_hand_patched_metric(tiny_model, task, pos) - clean, abs=1e-5)
    assert abs(exact[edge]) > 1e-4
    # every position of an edge ablated at once, by position-resolved ids, is the edge ablated
    source = g.ablation_source(tiny_model, task, "mean")
    base = names.edge_position(other)[0]
    with torch.no_grad():
        whole = g.run_with_edges(tiny_model, task.clean, None, source, ablate_edges=[base])
        spread = g.run_with_edges(tiny_model, task.clean, None, source,
                                  ablate_edges=[names.edge_at(base, p) for p in range(task.clean.shape[1])])
    assert torch.allclose(whole, spread, atol=1e-5)


@pytest.mark.parametrize("model_name", ["tiny_model", "gqa_model"])
def test_qk_fix_by_position_equals_pattern_attribution_done_by_hand(request, task, model_name):
    model = request.getfixturevalue(model_name)
    n_pos = task.clean.shape[1]
    plain = attribution.eap(model, task, ablation="mean", progress=False, qk_fix=True)
    fixed = attribution.eap(model, task, ablation="mean", progress=False, qk_fix=True, by_pos=True)
    summed = dict(zip(plain.labels, fixed.values.reshape(n_pos, -1).sum(0).tolist(), strict=True))
    # a query position's edge moves its own pattern row only: over positions they are the edge's QK fix
    queries = [label for label in plain.labels if label.endswith("<q>")]
    assert torch.allclose(torch.tensor([summed[e] for e in queries]), plain.subset(queries).values, atol=1e-5)
    picks = [names.edge_at("input->a1.h2<k>", 3), names.edge_at("a0.h1->a1.h3<k>", 5),
             names.edge_at("a0.h1->a1.h3<q>", 6), names.edge_at("input->a0.h0<k>", 0)]
    source = g.ablation_source(model, task, "mean")
    by_hand = torch.tensor([pattern_change_times_gradient(model, task, source, edge) for edge in picks])
    assert by_hand.abs().max() > 1e-4  # the check is not vacuous
    assert torch.allclose(fixed.subset(picks).values, by_hand, atol=1e-5, rtol=1e-4)


def test_by_pos_refuses_before_work(tiny_model, task):
    with pytest.raises(ValueError, match="by_pos=False"):
        attribution.eap(tiny_model, task, by_pos=True, max_memory=1e4, progress=False)
    with pytest.raises(ValueError, match="by_pos=True"):
        attribution.exact_edge_patching(tiny_model, task, edges=["input@1->logits@1"], progress=False)
    with pytest.raises(ValueError, match="position"):
        attribution.exact_edge_patching(tiny_model, task, edges=["input->logits"], by_pos=True, progress=False)
    with pytest.raises(ValueError, match="same position"):
        names.edge_position("input@1->logits@2")
    with pytest.raises(ValueError, match="by_pos=True"):  # a 4-d mask without by_pos
        g.run_with_mask(tiny_model, task.clean, torch.zeros(1, task.clean.shape[1], *g.graph_index(tiny_model).shape),
                        g.ablation_source(tiny_model, task, "mean"))


BY_POS_ORACLE = json.loads((Path(__file__).parent / "data" / "auto_circuit_by_pos_scores.json").read_text())


@pytest.mark.parametrize("run", ["eap-corrupted", "mask-ig-corrupted"])
def test_position_scores_equal_auto_circuits_seq_masks(run):
    """auto-circuit's ``patchable_model(seq_len=...)`` (a mask per edge and position; written by
    ``make_auto_circuit_by_pos_fixture.py``) against ``by_pos``: auto-circuit = ``-steps`` x
    circuitkit, (edge, position) by (edge, position), as in ``test_auto_circuit.py``."""
    import circuitkit as ck

    (name, found), = BY_POS_ORACLE["models"].items()
    model = ck.load_model(f"zoo:{name}")
    task = ck.zoo_task(name, model).subset(torch.tensor(found["rows"]))
    cut = found["length"]
    task = dataclasses.replace(task, clean=task.clean[:, :cut], corrupted=task.corrupted[:, :cut])
    if run == "eap-corrupted":
        scores, factor = ck.eap(model, task, ablation="corrupted", progress=False, by_pos=True), -1.0
    else:
        steps = found["integrated_grad_samples"] + 1
        scores = ck.eap_ig(model, task, steps=steps, ablation="corrupted", interpolate="mask", progress=False,
                           by_pos=True)
        factor = -float(steps)
    theirs = found["scores"][run]
    assert set(scores.labels) == set(theirs)  # the same position-resolved graph
    ours = torch.tensor([factor * scores[e] for e in theirs])
    expected = torch.tensor(list(theirs.values()))
    scale = float(expected.abs().max())
    assert scale > 1.0
    assert float((ours - expected).abs().max()) <= 1e-4 * scale
