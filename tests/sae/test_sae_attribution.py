from __future__ import annotations

import pytest
import torch

from circuitkit.sae import feature_attribution, feature_patching, spliced_sae
from circuitkit.scores import META_KEYS
from circuitkit.tasks.builders import ioi


@pytest.fixture(scope="session")
def ioi_task(word_tokenizer):
    return ioi(word_tokenizer, n_prompts=8)


def test_splice_keeps_the_forward_unchanged(tiny_model, random_sae, ioi_task):
    sae = random_sae(32, 48, "blocks.1.hook_resid_pre")
    clean = tiny_model(ioi_task.clean)
    with spliced_sae(tiny_model, sae):
        spliced = tiny_model(ioi_task.clean)
    torch.testing.assert_close(spliced, clean, atol=1e-4, rtol=1e-4)
    assert not sae.use_error_term


def test_attribution_is_exact_where_the_metric_is_linear(tiny_attn_only, random_sae, ioi_task):
    # No LayerNorm and the final residual stream: logits (and logit difference) are linear in the
    # features, so attribution patching equals exact patching.
    sae = random_sae(32, 48, "blocks.1.hook_resid_post", seed=1)
    scores = feature_attribution(tiny_attn_only, sae, ioi_task)
    assert len(scores) == 48 and scores.labels[7] == "f1.resid_post.7"
    top = [int(label.split(".")[-1]) for label, _ in scores.top(6)]
    exact = feature_patching(tiny_attn_only, sae, ioi_task, top)
    for label, value in exact.as_dict().items():
        assert scores[label] == pytest.approx(value, rel=1e-3, abs=1e-6)
    assert abs(exact.values).max() > 1e-3  # the check is not vacuous


def test_attribution_tracks_exact_patching_through_layernorm(tiny_model, random_sae, ioi_task):
    sae = random_sae(32, 48, "blocks.1.hook_resid_pre", seed=2)
    scores = feature_attribution(tiny_model, sae, ioi_task, features=range(0, 48, 2))
    assert scores.labels[1] == "f1.resid_pre.2"
    idx = [int(label.split(".")[-1]) for label, _ in scores.top(6)]
    exact = feature_patching(tiny_model, sae, ioi_task, idx)
    approx = torch.tensor([scores[label] for label in exact.labels])
    assert (torch.sign(approx) == torch.sign(exact.values)).all()
    assert torch.corrcoef(torch.stack([approx, exact.values]))[0, 1] > 0.95
    assert set(scores.meta) | set(exact.meta) <= set(META_KEYS)


def test_attribution_rejects_bad_features(tiny_model, random_sae, ioi_task):
    sae = random_sae(32, 48, "blocks.1.hook_resid_pre")
    with pytest.raises(ValueError, match="outside this SAE's 48 latents"):
        feature_attribution(tiny_model, sae, ioi_task, features=[48])
