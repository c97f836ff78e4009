"""Feature cards of a circuit's feature nodes: logit effects and top activations against brute force."""

from __future__ import annotations

import copy

import pytest
import torch

from circuitkit import names
from circuitkit.sae import feature_cards, logit_effects

SITE0, SITE1 = "blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def saes(tiny_model, random_sae):
    d = tiny_model.cfg.d_model
    return [random_sae(d, 24, SITE0, seed=1), random_sae(d, 24, SITE1, seed=2)]


@pytest.fixture(scope="module")
def corpus(word_tokenizer):
    return torch.randint(4, len(word_tokenizer), (12, 10), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def normed_model(tiny_model):
    """The tiny model with a non-trivial final LayerNorm weight (a fresh model's is all ones)."""
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.ln_final.w.copy_(torch.rand(model.cfg.d_model, generator=torch.Generator().manual_seed(4)) + 0.5)
    return model


def by_hand(model, sae, index):
    """The decoder row, centred (LayerNorm), times the final norm's weight, through W_U."""
    row = sae.W_dec[index].detach()
    return ((row - row.mean()) * model.ln_final.w.detach()) @ model.W_U.detach()


def test_logit_effects_treat_the_final_norm_as_transformer_lens_fold_ln(normed_model, saes):
    sae = saes[1]
    torch.testing.assert_close(logit_effects(normed_model, sae, 7), by_hand(normed_model, sae, 7))
    # the outside oracle: TransformerLens folds the final norm into W_U (the model Neuronpedia reads)
    folded = copy.deepcopy(normed_model)
    folded.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=False)
    assert folded.cfg.normalization_type == "LNPre" and not hasattr(folded.ln_final, "w")
    torch.testing.assert_close(logit_effects(folded, sae, 7), sae.W_dec[7].detach() @ folded.W_U.detach())
    torch.testing.assert_close(logit_effects(folded, sae, 7), by_hand(normed_model, sae, 7), rtol=1e-5, atol=1e-5)


def test_cards_top_activations_and_logit_effects_match_brute_force(normed_model, saes, corpus):
    nodes = [names.feature(0, "resid_pre", 3, 2), names.feature(0, "resid_pre", 3, 5),  # one card per feature
             names.feature(1, "resid_post", 11, 4), names.error(1, "resid_post", 4), "input@2", "logits"]
    cards = feature_cards(normed_model, saes, corpus, nodes, k=4, context=3, n_tokens=6)
    assert list(cards) == ["f0.resid_pre.3", "f1.resid_post.11"]
    for (fid, card), sae, hook in zip(cards.items(), saes, (SITE0, SITE1), strict=True):
        index = names.parse_node(fid).index
        _, cache = normed_model.run_with_cache(corpus, names_filter=[hook])
        with torch.no_grad():
            acts = torch.stack([torch.stack([sae.encode(cache[hook][b, p]) for p in range(corpus.shape[1])])
                                for b in range(len(corpus))])[..., index]  # one position at a time
        order = sorted(((float(acts[b, p]), b, p) for b in range(acts.shape[0]) for p in range(acts.shape[1])),
                       reverse=True)[:4]
        assert card.label == fid
        torch.testing.assert_close(torch.tensor(card.examples["activation"].tolist()),
                                   torch.tensor([a for a, _, _ in order]), rtol=1e-5, atol=1e-6)
        best, b, p = order[0]
        assert (card.examples["prompt"].iloc[0], card.examples["pos"].iloc[0]) == (b, p)
        assert card.examples["token"].iloc[0] == normed_model.tokenizer.decode([int(corpus[b, p])])
        assert card.density == pytest.approx(float((acts > 0).float().mean()))
        effects = by_hand(normed_model, sae, index)
        assert card.boosted["token_id"].tolist() == torch.topk(effects, 6).indices.tolist()
        assert card.suppressed["token_id"].tolist() == torch.topk(-effects, 6).indices.tolist()
        assert card.boosted["logit"].iloc[0] == pytest.approx(float(effects.max()), abs=1e-5)


def test_cards_from_a_task_search_its_clean_prompts(tiny_model, saes, corpus):
    class Prompts:  # anything with .clean, as a Task
        clean = corpus

    a = feature_cards(tiny_model, saes, Prompts(), ["f0.resid_pre.3@1"], k=2)
    b = feature_cards(tiny_model, saes, corpus, ["f0.resid_pre.3"], k=2)
    assert a["f0.resid_pre.3"].examples.equals(b["f0.resid_pre.3"].examples)


def test_bad_features_are_refused_before_encoding(tiny_model, saes, corpus, monkeypatch):
    import circuitkit.sae.cards as cards_module

    def fail(*args, **kwargs):
        raise AssertionError("encoded before checking the features")

    monkeypatch.setattr(cards_module, "encode", fail)
    with pytest.raises(ValueError, match=r"'f0.mlp_out.1' names no spliced site.*e0.resid_pre"):
        feature_cards(tiny_model, saes, corpus, ["f0.resid_pre.1", "f0.mlp_out.1@2"])
    with pytest.raises(ValueError, match="index 24 is outside the 24 latents"):
        feature_cards(tiny_model, saes, corpus, ["f1.resid_post.24@0"])
    with pytest.raises(ValueError, match="unknown component name"):
        feature_cards(tiny_model, saes, corpus, ["f1.resid_post"])
