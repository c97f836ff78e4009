from __future__ import annotations

import random

import pytest
import torch

from circuitkit.heads import (
    needle_accuracy,
    retrieval_causal_check,
    retrieval_scores,
    uniform_attention_hooks,
)


@pytest.fixture(scope="module")
def toy_scores(toy_model, toy_task):
    return retrieval_scores(toy_model, toy_task, progress=False)


def test_uniform_attention_hook(toy_model):
    tokens = torch.tensor([[0, 5, 6, 7, 8]])
    with toy_model.hooks(fwd_hooks=uniform_attention_hooks(toy_model, ["a1.h0", "a1.h2"])):
        _, cache = toy_model.run_with_cache(tokens)
    expected = torch.tril(torch.ones(5, 5)) / torch.arange(1, 6)[:, None]
    torch.testing.assert_close(cache["pattern", 1][0, 0], expected)
    torch.testing.assert_close(cache["pattern", 1][0, 2], expected)
    assert not torch.allclose(cache["pattern", 1][0, 1], expected)  # the sink head is untouched


def test_top_head_ablation_destroys_needle_accuracy(toy_model, toy_task, toy_scores):
    check = retrieval_causal_check(toy_model, toy_task, toy_scores, k=1, n_random=6, seed=1, progress=False)
    assert check.top_heads == ["a1.h0"]
    assert check.full_accuracy == 1.0 and check.top_accuracy == 0.0
    assert all("a1.h0" not in draw for draw in check.random_heads)
    # Random non-retrieval heads leave retrieval intact, except the previous-token head that feeds it.
    for draw, acc in zip(check.random_heads, check.random_accuracies, strict=True):
        assert acc == (0.0 if "a0.h0" in draw else 1.0)
    assert check.gap == pytest.approx(check.mean_random_accuracy)
    frame = check.to_frame()
    assert list(frame["condition"][:2]) == ["full", "top-1"] and len(frame) == 2 + 6 + 1
    assert frame["accuracy"].iloc[-1] == pytest.approx(check.mean_random_accuracy)


def test_first_token_accuracy(toy_model, toy_task):
    full, per_prompt = needle_accuracy(toy_model, toy_task, ["a1.h0"], accuracy="first")
    assert full == 0.0 and per_prompt.shape == (len(toy_task),)
    assert needle_accuracy(toy_model, toy_task, ["a0.h3", "a1.h3"])[0] == 1.0


def test_bad_arguments(toy_model, toy_task, toy_scores):
    with pytest.raises(ValueError, match="k must be between 1 and the model's 8 heads"):
        retrieval_causal_check(toy_model, toy_task, toy_scores, k=9)
    with pytest.raises(ValueError, match="only 7 heads score <= 0.1, fewer than k=8"):
        retrieval_causal_check(toy_model, toy_task, toy_scores, k=8)
    with pytest.raises(ValueError, match="accuracy must be 'full'"):
        needle_accuracy(toy_model, toy_task, accuracy="all")
    with pytest.raises(ValueError, match="out of range"):
        uniform_attention_hooks(toy_model, ["a5.h0"])


def test_random_draws_are_distinct_until_exhausted(toy_model, toy_task, toy_scores):
    from circuitkit.heads.causal import _distinct_draws

    check = retrieval_causal_check(toy_model, toy_task, toy_scores, k=1, n_random=7, seed=0, progress=False)
    assert sorted(h for (h,) in check.random_heads) == sorted(set(toy_scores.labels) - {"a1.h0"})
    many = _distinct_draws([f"a{i}.h{j}" for i in range(12) for j in range(12)], 5, 50, random.Random(0))
    assert len({tuple(d) for d in many}) == 50 and all(len(set(d)) == 5 for d in many)
