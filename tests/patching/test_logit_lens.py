"""Direct logit attribution adds up to the logit difference; the logit lens ends at the model's metric."""

from __future__ import annotations

import pytest
import torch
from model_factory import make_model

from circuitkit import names
from circuitkit.patching import direct_logit_attribution, logit_lens
from circuitkit.tasks import metrics
from circuitkit.tasks.task import Task

CONFIGS = {
    "gpt2_ln_learned": dict(n_layers=2, seed=11),
    "rms_rotary_gqa": dict(n_layers=2, normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8,
                           n_key_value_heads=2, seed=12),
    "attn_only": dict(n_layers=2, attn_only=True, normalization_type=None, seed=13),
}


def task_for(model, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    vocab = model.cfg.d_vocab
    return Task(
        "random", torch.randint(0, vocab, (3, 6), generator=g), torch.randint(0, vocab, (3, 6), generator=g),
        [[5], [7, 9], [11]], [[6, 8], [10], [12]],  # several (padded) answers per prompt
        answer_pos=[5, 3, 4],
    )


@pytest.fixture(scope="module")
def setups(word_tokenizer):
    out = {}
    for name, overrides in CONFIGS.items():
        model = make_model(word_tokenizer, **overrides)
        with torch.no_grad():  # non-zero biases and LayerNorm weights, so every term is exercised
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        out[name] = (model, task_for(model))
    return out


@pytest.mark.parametrize("config", list(CONFIGS))
def test_components_sum_to_logit_difference(setups, config):
    model, task = setups[config]
    dla = direct_logit_attribution(model, task)
    with torch.no_grad():
        logit_diff = metrics.logit_diff(model(task.clean), task)
    assert dla.meta["logit_diff"] == pytest.approx(float(logit_diff.mean()), abs=1e-5)
    assert float(dla.values.sum()) + dla.meta["bias"] == pytest.approx(float(logit_diff.mean()), abs=1e-4)
    assert dla.meta["per_prompt"].shape == (len(dla), len(task))
    expected = [names.INPUT] + [names.head(0, h) for h in range(4)] + ([names.mlp(0)] if not model.cfg.attn_only else [])
    assert dla.labels[: len(expected)] == expected


def test_one_head_by_hand(setups):
    """A head's DLA = its output at the answer position / frozen final LN scale, read by W_U."""
    model, task = setups["gpt2_ln_learned"]
    dla = direct_logit_attribution(model, task)
    with torch.no_grad():
        _, cache = model.run_with_cache(task.clean)
        layer, head = 1, 2
        out = cache[f"blocks.{layer}.attn.hook_z"][:, :, head] @ model.W_O[layer, head]  # [batch, pos, d_model]
        batch = torch.arange(len(task))
        out = out[batch, task.answer_pos]
        out = (out - out.mean(-1, keepdim=True)) / cache["ln_final.hook_scale"][batch, task.answer_pos]
        logits = (out * model.ln_final.w) @ model.W_U  # [batch, vocab]
        expected = metrics.logit_diff(logits, task)  # the logit difference of this head's own logits
    assert dla[names.head(layer, head)] == pytest.approx(float(expected.mean()), abs=1e-5)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_logit_lens_ends_at_the_model_metric(setups, config):
    model, task = setups[config]
    lens = logit_lens(model, task)
    n_layers = model.cfg.n_layers
    assert lens.labels == [names.site("resid_pre", layer) for layer in range(n_layers)] + [
        names.site("resid_post", n_layers - 1)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(task.clean)
        final = task.score(logits)
        resid = cache["blocks.1.hook_resid_pre"]
        layer1 = task.score(model.unembed(model.ln_final(resid) if model.cfg.normalization_type else resid))
    assert lens[names.site("resid_post", n_layers - 1)] == pytest.approx(float(final), abs=1e-5)
    assert lens[names.site("resid_pre", 1)] == pytest.approx(float(layer1), abs=1e-5)
    assert lens.meta["per_prompt"].shape == (n_layers + 1, len(task))
    assert list(lens.to_frame()["layer"]) == [0, 1, 1]


def test_corrupted_run_and_bad_input(setups):
    model, task = setups["gpt2_ln_learned"]
    clean, corrupted = direct_logit_attribution(model, task), direct_logit_attribution(model, task, which="corrupted")
    assert not torch.allclose(clean.values, corrupted.values)
    with pytest.raises(ValueError, match=r"which must be 'clean' or 'corrupted'"):
        logit_lens(model, task, which="both")
    foreign = Task("foreign", task.clean + model.cfg.d_vocab, task.corrupted, task.answers, task.wrong_answers)
    with pytest.raises(ValueError, match=r"vocabulary"):
        direct_logit_attribution(model, foreign)
