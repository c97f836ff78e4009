import pytest
import torch

from circuitkit import Scores


def test_head_grid_round_trip_and_frame():
    grid = torch.arange(6.0).reshape(2, 3)
    s = Scores.from_head_grid(grid, method="test", task="t")
    assert s["a1.h2"] == 5.0
    assert torch.equal(s.head_grid(), grid)
    frame = s.to_frame()
    assert list(frame.columns[:2]) == ["component", "score"]
    assert frame.loc[frame.component == "a1.h0", "layer"].item() == 1
    assert s.top(2) == [("a1.h2", 5.0), ("a1.h1", 4.0)]


def test_scores_reject_bad_labels():
    with pytest.raises(ValueError, match="one label per value"):
        Scores(torch.zeros(3), ["a0.h0", "a0.h1"], "m")
    with pytest.raises(ValueError, match="unique"):
        Scores(torch.zeros(2), ["a0.h0", "a0.h0"], "m")
    with pytest.raises(ValueError, match="mixes node and edge"):
        Scores(torch.zeros(2), ["a0.h0", "a0.h0->logits"], "m")
    with pytest.raises(ValueError, match="unknown component"):
        Scores(torch.zeros(1), ["attn0"], "m")
    with pytest.raises(KeyError, match="no score"):
        Scores(torch.zeros(1), ["a0.h0"], "m")["a0.h1"]


def test_every_estimator_sets_only_documented_meta_keys(tiny_model, toy_model, toy_task):
    import circuitkit as ck
    from circuitkit.heads import head_scores, repeated_tokens
    from circuitkit.scores import META_KEYS
    from circuitkit.tasks.builders import ioi

    task = ioi(tiny_model, n_prompts=4)
    results = [
        ck.activation_patching(tiny_model, task, progress=False),
        ck.path_patching(tiny_model, task, receivers=["logits"], receiver_input="resid", progress=False),
        ck.attribution_patching(tiny_model, task, progress=False),
        ck.eap(tiny_model, task, progress=False),
        ck.eap_ig(tiny_model, task, steps=2, progress=False),
        ck.exact_edge_patching(tiny_model, task, edges=["a0.h0->logits"], progress=False),
        ck.logit_lens(tiny_model, task),
        ck.direct_logit_attribution(tiny_model, task),
        ck.retrieval_scores(toy_model, toy_task, progress=False),
        head_scores(tiny_model, repeated_tokens(tiny_model, 2, 5, 2, 0), "induction", progress=False),
    ]
    undocumented = {s.method: sorted(set(s.meta) - set(META_KEYS)) for s in results if set(s.meta) - set(META_KEYS)}
    assert not undocumented, f"meta keys missing from circuitkit.scores.META_KEYS: {undocumented}"
    assert all(s.meta.get("n_layers") for s in results)  # every estimator says the model's shape
