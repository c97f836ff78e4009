import pytest
import torch
from oracles import pattern_change_times_gradient

from circuitkit import names
from circuitkit.ablation import edges as g
from circuitkit.attribution import attribution_patching, eap, eap_ig, exact_edge_patching
from circuitkit.tasks.builders import induction


def _into_logits(scores):
    return [label for label in scores.labels if names.parse_edge(label).child == names.LOGITS]


def test_eap_labels_and_ig_with_one_step_is_eap(tiny_model, task):
    scores = eap(tiny_model, task, progress=False)
    assert scores.labels == names.all_edges(2, 4, has_mlp=True)
    assert scores.method == "eap" and scores.task == "induction" and scores.metric == "logit_diff"
    for interpolate in ("inputs", "activations"):
        one_step = eap_ig(tiny_model, task, steps=1, progress=False, interpolate=interpolate)
        assert torch.allclose(one_step.values, scores.values, atol=1e-6)
    assert scores.values.abs().max() > 1e-3


def test_eap_is_exact_where_the_model_is_linear(tiny_attn_only, task):
    """No final norm and a logit-difference metric: edges into logits act linearly."""
    exact = exact_edge_patching(tiny_attn_only, task, progress=False)
    into_logits = _into_logits(exact)
    for scores in (eap(tiny_attn_only, task, progress=False), eap_ig(tiny_attn_only, task, steps=3, progress=False),
                   eap_ig(tiny_attn_only, task, steps=3, progress=False, interpolate="activations")):
        approx = scores.subset(into_logits).values
        assert torch.allclose(approx, exact.subset(into_logits).values, atol=1e-4)
    assert exact.subset(into_logits).values.abs().max() > 1e-3


@pytest.mark.parametrize("model_name", ["tiny_model", "gqa_model"])
def test_ig_completeness_improves_with_steps(request, task, model_name):
    model = request.getfixturevalue(model_name)
    with torch.no_grad():
        gap = float(task.score(model(task.corrupted)) - task.score(model(task.clean)))
    errors = []
    for steps in (1, 4, 24):
        scores = eap_ig(model, task, steps=steps, level="node", ablation="corrupted", progress=False)
        errors.append(abs(scores["input"] - gap))
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.05 * abs(gap)


@pytest.mark.parametrize("model_name", ["tiny_model", "gqa_model"])
def test_ig_activations_runs_equal_mask_gradients(request, task, model_name):
    """Each run of ``interpolate="activations"`` (one group's outputs at ``source + alpha (clean -
    source)``) against the gradient of ``graph.run_with_mask`` with that group's outgoing edges
    ablated by ``1 - alpha``: ``d metric / d mask[v, u] = (source_u - live_u) . dM/d input_v``,
    which is the same score wherever u's live output is its clean one (u not downstream of the
    group). Every later layer's edges are compared, so the interpolated state really reaches them."""
    from circuitkit.attribution.edge import accumulate_edge_grads, output_groups

    model = request.getfixturevalue(model_name)
    index = g.graph_index(model)
    source = g.ablation_source(model, task, "mean")
    clean = g.node_outputs(model, task.clean)
    valid = index.valid_mask()
    alpha = 0.4
    groups = output_groups(index)
    assert [hook for hook, _ in groups][:3] == [g.INPUT_HOOK, "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out"]
    for hook, group_nodes in groups:
        fast = torch.zeros(index.shape)
        accumulate_edge_grads(model, task, index, source, clean, alpha, len(task), fast, (hook, group_nodes))
        cols = [index.upstream_index(n) for n in group_nodes]
        mask = torch.full(index.shape, 1e-7)  # > 0 everywhere, so every edge's gradient is computed
        mask[:, cols] = 1 - alpha
        mask = (mask * valid).requires_grad_(True)
        metric = task.score(g.run_with_mask(model, task.clean, mask, source))
        slow = torch.autograd.grad(metric, mask)[0]
        last = max(cols)  # upstream nodes come in graph order: up to the group's last, none reads it
        torch.testing.assert_close(fast[:, :last + 1], slow[:, :last + 1], atol=2e-4, rtol=1e-3)
        assert slow[:, cols].abs().max() > 1e-3


def test_node_level_equals_attribution_patching(tiny_model, task):
    nodes = eap(tiny_model, task, level="node", ablation="corrupted", progress=False)  # attribution_patching's source
    assert nodes.labels == g.graph_nodes(tiny_model)[:-1]
    per_node = attribution_patching(tiny_model, task, "nodes", progress=False)
    assert per_node.labels == nodes.labels
    assert torch.allclose(per_node.values, nodes.values, atol=1e-5)
    heads = attribution_patching(tiny_model, task, "head_out", progress=False)
    assert torch.allclose(heads.values, nodes.subset(heads.labels).values, atol=1e-5)
    v = attribution_patching(tiny_model, task, "v", progress=False)
    assert v.labels == heads.labels and not torch.allclose(v.values, heads.values, atol=1e-4)
    by_pos = attribution_patching(tiny_model, task, "mlp_out", by_pos=True, progress=False)
    assert by_pos.labels[:2] == ["m0@0", "m0@1"]
    summed = attribution_patching(tiny_model, task, "mlp_out", progress=False)
    assert torch.allclose(torch.tensor([sum(v for k, v in by_pos.as_dict().items() if k.startswith(m + "@"))
                                        for m in summed.labels]), summed.values, atol=1e-5)
    pattern = attribution_patching(tiny_model, task, "pattern", batch_size=3, progress=False)
    assert len(pattern) == 8 and pattern.values.abs().max() > 0


def test_whole_layer_sites(tiny_model, tiny_attn_only, task):
    nodes = attribution_patching(tiny_model, task, "nodes", progress=False)
    resid = attribution_patching(tiny_model, task, "resid_pre", progress=False)
    assert resid.labels == ["resid_pre.0", "resid_pre.1"]
    assert resid["resid_pre.0"] == pytest.approx(nodes["input"], abs=1e-5)  # the embeddings
    # attn_out is the sum of the head outputs (+ a bias that patching cancels)
    heads = attribution_patching(tiny_attn_only, task, "head_out", progress=False).as_dict()
    attn = attribution_patching(tiny_attn_only, task, "attn_out", by_pos=True, progress=False)
    assert attn.labels[1] == "attn_out.0@1"
    for layer in range(2):
        by_layer = sum(v for k, v in attn.as_dict().items() if k.startswith(f"attn_out.{layer}@"))
        assert by_layer == pytest.approx(sum(heads[names.head(layer, h)] for h in range(4)), abs=1e-5)


def test_attribution_patching_matches_patching_a_last_head(tiny_attn_only, task):
    """Linear case: a last-layer head only feeds the logits, so patching it is exactly linear."""
    scores = attribution_patching(tiny_attn_only, task, "head_out", progress=False)
    source = g.ablation_source(tiny_attn_only, task, "corrupted")
    with torch.no_grad():
        base = task.score(tiny_attn_only(task.clean))
        for h in range(4):
            head = names.head(1, h)
            patched = g.run_with_edges(tiny_attn_only, task.clean, None, source, ablate_edges=[names.edge(head, "logits")])
            assert abs(float(task.score(patched) - base) - scores[head]) < 1e-4


def test_exact_edge_patching_equals_single_runs(tiny_model, task):
    edges = ["a0.h1->a1.h2<k>", "input->m1", "a1.h3->logits", "m0->a1.h0<v>", "a0.h0->m0"]
    scores = exact_edge_patching(tiny_model, task, edges, ablation="mean", batch_size=8, progress=False)
    assert scores.labels == edges and scores.meta["ablation"] == "mean"
    source = g.ablation_source(tiny_model, task, "mean")
    with torch.no_grad():
        base = task.score(tiny_model(task.clean))
        for e in edges:
            one = task.score(g.run_with_edges(tiny_model, task.clean, None, source, ablate_edges=[e]))
            assert abs(float(one - base) - scores[e]) < 1e-5


def test_batching_prompts_changes_nothing(gqa_model, task):
    full = eap_ig(gqa_model, task, steps=2, ablation="resample", progress=False)
    split = eap_ig(gqa_model, task, steps=2, ablation="resample", batch_size=3, progress=False)
    assert torch.allclose(full.values, split.values, atol=1e-5)


def test_eap_ig_ranks_edges_like_exact_patching(tiny_model, task):
    import pandas as pd

    exact = exact_edge_patching(tiny_model, task, progress=False)
    ig = eap_ig(tiny_model, task, steps=5, progress=False)
    rho = pd.Series(ig.values.numpy()).corr(pd.Series(exact.values.numpy()), method="spearman")
    assert rho > 0.8


def test_bad_input(tiny_model, tiny_attn_only, task, bpe_tokenizer):
    with pytest.raises(ValueError, match="not in this model's graph"):
        exact_edge_patching(tiny_model, task, ["a1.h0->a0.h1<q>"], progress=False)
    with pytest.raises(ValueError, match="attention-only"):
        exact_edge_patching(tiny_attn_only, task, ["m0->logits"], progress=False)
    with pytest.raises(ValueError, match="unknown ablation"):
        eap(tiny_model, task, ablation="gaussian", progress=False)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        eap_ig(tiny_model, task, steps=0, progress=False)
    with pytest.raises(ValueError, match="interpolate must be 'inputs'"):
        eap_ig(tiny_model, task, interpolate="outputs", progress=False)
    with pytest.raises(ValueError, match="level must be"):
        eap(tiny_model, task, level="layer", progress=False)
    with pytest.raises(ValueError, match="unknown attribution target"):
        attribution_patching(tiny_model, task, "resid_final", progress=False)
    with pytest.raises(ValueError, match="attention-only"):
        attribution_patching(tiny_attn_only, task, "mlp_out", progress=False)
    # a task built for another vocabulary
    other = induction(bpe_tokenizer, n_prompts=2, seq_len=4)
    big = other if int(other.clean.max()) >= tiny_model.cfg.d_vocab else None
    assert big is not None
    with pytest.raises(ValueError, match="tokenizer"):
        eap(tiny_model, big, progress=False)
    nan_task = task.with_metric(lambda logits, t: torch.full((logits.shape[0],), float("nan")))
    with pytest.raises(ValueError, match="returned NaN"):
        eap_ig(tiny_model, nan_task, steps=2, progress=False)
    with pytest.raises(ValueError, match="returned NaN"):
        exact_edge_patching(tiny_model, nan_task, ["m0->logits"], progress=False)


def test_benchmark_roc_auc_matches_hand_count():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "attribution.py"
    spec = importlib.util.spec_from_file_location("attribution_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # positives 0.35 and 0.8 beat 1 and 2 of the 2 negatives: 3 of 4 pairs ordered -> 0.75
    assert bench._roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # a positive-negative tie counts half: pairs 0.5=0.5 -> 0.5, the other three ordered -> 3.5 / 4
    assert bench._roc_auc([0.5, 1.0, 0.5, 0.0], [1, 1, 0, 0]) == pytest.approx(0.875)
    assert bench._roc_auc([0.2, 0.9], [1, 0]) == 0.0


@pytest.mark.parametrize("model_name", ["tiny_model", "tiny_attn_only", "gqa_model"])
def test_qk_fix_equals_pattern_attribution_done_by_hand(request, task, model_name):
    model = request.getfixturevalue(model_name)
    plain = eap(model, task, ablation="mean", progress=False)
    fixed = eap(model, task, ablation="mean", progress=False, qk_fix=True)
    assert fixed.meta["qk_fix"] is True
    qk = [label for label in fixed.labels if label.endswith(("<q>", "<k>"))]
    others = [label for label in fixed.labels if label not in set(qk)]
    # v / MLP / logits edges keep their EAP scores
    assert torch.allclose(fixed.subset(others).values, plain.subset(others).values, atol=1e-6)
    picks = [qk[0], qk[len(qk) // 2], qk[-1], "input->a1.h2<k>", "a0.h1->a1.h3<q>"]
    source = g.ablation_source(model, task, "mean")
    by_hand = torch.tensor([pattern_change_times_gradient(model, task, source, edge) for edge in picks])
    assert by_hand.abs().max() > 1e-4  # the check is not vacuous
    assert torch.allclose(fixed.subset(picks).values, by_hand, atol=1e-5, rtol=1e-4)
    # batching prompts changes nothing
    batched = eap_ig(model, task, steps=2, ablation="mean", batch_size=3, progress=False, qk_fix=True)
    whole = eap_ig(model, task, steps=2, ablation="mean", progress=False, qk_fix=True)
    assert torch.allclose(batched.values, whole.values, atol=1e-5)


def test_qk_fix_runs_on_frozen_weights_and_leaves_no_weight_gradients(tiny_model, task):
    """The QK fix takes dM/d pattern from the input embeddings on: a model whose weights are frozen
    gives the same scores, and no run leaves a ``.grad`` on any weight."""
    for p in tiny_model.parameters():  # the fixture is shared: start from no gradients
        p.grad = None
    expected = eap(tiny_model, task, ablation="mean", progress=False, qk_fix=True)
    assert all(p.grad is None for p in tiny_model.parameters())
    frozen = [p.requires_grad for p in tiny_model.parameters()]
    try:
        for p in tiny_model.parameters():
            p.requires_grad_(False)
        got = eap(tiny_model, task, ablation="mean", progress=False, qk_fix=True)
    finally:
        for p, needed in zip(tiny_model.parameters(), frozen, strict=True):
            p.requires_grad_(needed)
    torch.testing.assert_close(got.values, expected.values, atol=1e-6, rtol=1e-6)
