from __future__ import annotations

import pytest
import torch

from circuitkit.sae import encode, feature_card, top_activating_examples
from circuitkit.viz import feature_card_html
from circuitkit.viz.sae import feature_density_histogram, top_examples_figure, top_examples_html

HOOK = "blocks.1.hook_resid_pre"


def test_encode_matches_cache(tiny_model, trained_sae, sae_tokens):
    acts = encode(tiny_model, trained_sae, sae_tokens, batch_size=5)
    _, cache = tiny_model.run_with_cache(sae_tokens)
    assert acts.shape == (*sae_tokens.shape, 64)
    torch.testing.assert_close(acts, trained_sae.encode(cache[HOOK]))


@pytest.mark.parametrize("sae_reshapes", [False, True])
def test_hook_z_activations_are_flattened(tiny_model, random_sae, sae_tokens, sae_reshapes):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from circuitkit.sae import sae_quality

    hook = "blocks.0.attn.hook_z"
    width = tiny_model.cfg.n_heads * tiny_model.cfg.d_head
    if sae_reshapes:  # SAELens's hook_z SAEs flatten [.., head, d_head] inputs themselves
        sae = StandardSAE(StandardSAEConfig(d_in=width, d_sae=8, reshape_activations="hook_z",
                                            metadata=SAEMetadata(hook_name=hook)))
    else:
        sae = random_sae(width, 8, hook)
    acts = encode(tiny_model, sae, sae_tokens[:2])
    _, cache = tiny_model.run_with_cache(sae_tokens[:2])
    expected = sae.encode(cache[hook].flatten(-2)) if not sae_reshapes else sae.encode(cache[hook])
    torch.testing.assert_close(acts, expected)
    assert sae_quality(tiny_model, sae, sae_tokens[:2]).n_tokens == 32
    assert getattr(sae, "hook_z_reshaping_mode", False) == sae_reshapes


def test_top_activating_examples(tiny_model, trained_sae, sae_tokens):
    acts = encode(tiny_model, trained_sae, sae_tokens)
    feature = int((acts > 0).float().mean((0, 1)).argmax())
    frame = top_activating_examples(tiny_model, trained_sae, sae_tokens, feature, k=4, context=3)
    assert len(frame) == 4
    assert frame["activation"].is_monotonic_decreasing
    assert frame["activation"].iloc[0] == pytest.approx(float(acts[..., feature].max()))
    for _, row in frame.iterrows():
        assert row["activation"] == pytest.approx(float(acts[row["prompt"], row["pos"], feature]))
        assert row["context_acts"][row["center"]] == pytest.approx(row["activation"])
        assert row["context_tokens"][row["center"]] == row["token"]
        assert len(row["context_tokens"]) == len(row["context_acts"]) <= 3 + 1 + 2
    html = top_examples_html(frame)
    assert html.count("<tr>") == 5 and f"feature {feature}" in html
    fig = top_examples_figure(frame)
    assert len(fig.data[0].z) == 4
    with pytest.raises(ValueError, match="outside this SAE's 64 latents"):
        top_activating_examples(tiny_model, trained_sae, sae_tokens, 64)


def test_density_histogram_counts_latents(tiny_model, trained_sae, sae_tokens):
    acts = encode(tiny_model, trained_sae, sae_tokens)
    alive = int((acts.reshape(-1, 64) > 0).any(0).sum())
    fig = feature_density_histogram(acts)
    assert len(fig.data[0].x) == alive
    assert f"{64 - alive} dead" in fig.layout.title.text


def test_feature_card_output_tokens(tiny_model, trained_sae, sae_tokens):
    card = feature_card(tiny_model, trained_sae, 5, sae_tokens, k=3)
    assert card.label == "f1.resid_pre.5"
    row = trained_sae.W_dec[5].detach()
    # the final LayerNorm (weight 1 in this fresh model) centres the direction before W_U
    logits = ((row - row.mean()) * tiny_model.ln_final.w.detach()) @ tiny_model.W_U.detach()
    assert card.boosted["token_id"].tolist() == torch.topk(logits, 3).indices.tolist()
    assert card.suppressed["token_id"].tolist() == torch.topk(-logits, 3).indices.tolist()
    assert card.boosted["logit"].iloc[0] == pytest.approx(float(logits.max()), abs=1e-5)
    assert card.boosted["token"].iloc[0] == tiny_model.tokenizer.decode([int(logits.argmax())])
    assert "f1.resid_pre.5" in feature_card_html(card)
