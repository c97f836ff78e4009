"""Batched path patching equals the explicit three-run procedure (Wang et al. 2022)."""

from __future__ import annotations

import pytest
import torch
from model_factory import make_model
from oracles import slow_path_patching

from circuitkit import names
from circuitkit.patching import activation_patching, path_patching
from circuitkit.tasks.task import Task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_task(model, n_prompts: int = 2, seq: int = 5, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    vocab = model.cfg.d_vocab
    return Task("random", torch.randint(0, vocab, (n_prompts, seq), generator=g),
                torch.randint(0, vocab, (n_prompts, seq), generator=g),
                torch.randint(0, vocab, (n_prompts, 1), generator=g), torch.randint(0, vocab, (n_prompts, 1), generator=g))


@pytest.fixture(scope="module")
def setups(word_tokenizer):
    out = {}
    for name, overrides in {
        "gpt2": dict(n_layers=3, seed=7),
        "gqa": dict(n_layers=3, normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8,
                    n_key_value_heads=2, seed=8),
    }.items():
        model = make_model(word_tokenizer, **overrides)
        out[name] = (model, random_task(model))
    return out


CASES = [
    ("gpt2", "resid", None, False),
    ("gpt2", "resid", None, True),
    ("gpt2", "q", ["a2.h1", "a2.h3", "a1.h0"], False),
    ("gpt2", "mlp", ["m1", "m2"], False),
    ("gqa", "k", ["a1.h0", "a2.h3"], False),
    ("gqa", "v", ["a2.h0"], False),
]


@pytest.mark.parametrize("config,receiver_input,receivers,freeze_mlps", CASES)
def test_matches_three_run_procedure(setups, config, receiver_input, receivers, freeze_mlps):
    model, task = setups[config]
    fast = path_patching(model, task, None, receivers, receiver_input, freeze_mlps=freeze_mlps,
                         batch_size=4, progress=False)
    assert len(fast) == model.cfg.n_layers * model.cfg.n_heads
    expected = torch.tensor([slow_path_patching(model, task, sender, receivers, receiver_input, freeze_mlps)
                             for sender in fast.labels])
    torch.testing.assert_close(fast.values, expected, atol=1e-4, rtol=0)
    assert (expected - 1).abs().max() > 1e-2  # some path matters: the comparison is not vacuous
    if receiver_input in ("q", "k", "v"):  # a sender in or above every receiver head's layer has no path to it
        top = max(names.parse_node(r).layer for r in receivers)
        assert fast[names.head(top, 0)] == pytest.approx(1.0, abs=1e-5)


def test_one_layer_path_to_logits_equals_head_output_noising(word_tokenizer):
    model = make_model(word_tokenizer, n_layers=1, seed=9)
    task = random_task(model)
    path = path_patching(model, task, progress=False)
    noising = activation_patching(model, task, "head_out", direction="noise", progress=False)
    assert path.labels == noising.labels
    torch.testing.assert_close(path.values, noising.values, atol=1e-5, rtol=0)


def test_selected_senders_and_grid(setups):
    model, task = setups["gpt2"]
    full = path_patching(model, task, None, ["a2.h1"], "q", progress=False)
    some = path_patching(model, task, ["a1.h2", "a0.h3"], ["a2.h1"], "q", progress=False)
    assert some.labels == ["a1.h2", "a0.h3"]
    assert some["a0.h3"] == pytest.approx(full["a0.h3"], abs=1e-6)
    assert some.meta["grid"][1, 2] == pytest.approx(some["a1.h2"])
    assert torch.isnan(some.meta["grid"]).sum() == model.cfg.n_layers * model.cfg.n_heads - 2


def test_bad_input(setups, tiny_attn_only):
    model, task = setups["gpt2"]
    with pytest.raises(ValueError, match=r"receiver_input must be one of"):
        path_patching(model, task, receivers=["a2.h0"], receiver_input="z")
    with pytest.raises(ValueError, match=r"receiver_input='resid'.*receivers=\['logits'\]"):
        path_patching(model, task, receivers=["a2.h0"], receiver_input="resid")
    with pytest.raises(ValueError, match=r"needs receivers"):
        path_patching(model, task, receivers=None, receiver_input="q")
    with pytest.raises(ValueError, match=r"sender head 'a3.h0' is out of range"):
        path_patching(model, task, senders=["a3.h0"])
    with pytest.raises(ValueError, match=r"receiver head 'a1.h4' is out of range"):
        path_patching(model, task, receivers=["a1.h4"], receiver_input="k")
    with pytest.raises(ValueError, match=r"MLP receiver 'a1.h0' must be 'm<layer>'"):
        path_patching(model, task, receivers=["a1.h0"], receiver_input="mlp")
    attn_task = random_task(tiny_attn_only)
    with pytest.raises(ValueError, match=r"attention-only: it has no MLP receivers"):
        path_patching(tiny_attn_only, attn_task, receivers=["m1"], receiver_input="mlp")
    foreign = Task("foreign", task.clean + model.cfg.d_vocab, task.corrupted, task.answers, task.wrong_answers)
    with pytest.raises(ValueError, match=r"vocabulary"):
        path_patching(model, foreign)
