from __future__ import annotations

import pytest
import torch

from circuitkit.sae import discrete_sae_head_scores, head_output_means
from circuitkit.sae.discrete import unique_code_scores
from circuitkit.tasks.builders import ioi


def test_head_output_means_match_hook_result(tiny_model, sae_tokens):
    tokens = sae_tokens[:3]
    lengths = torch.tensor([16, 5, 9])
    fast = head_output_means(tiny_model, tokens, lengths, batch_size=2)
    tiny_model.set_use_attn_result(True)
    try:
        _, cache = tiny_model.run_with_cache(tokens)
    finally:
        tiny_model.set_use_attn_result(False)
    for i, n in enumerate(lengths.tolist()):
        for layer in range(tiny_model.cfg.n_layers):
            slow = cache[f"blocks.{layer}.attn.hook_result"][i, :n].mean(0)  # [head, d_model]
            torch.testing.assert_close(fast[i, layer], slow, atol=1e-5, rtol=1e-4)


def test_unique_code_scores():
    pos = torch.tensor([[[0, 1]], [[2, 1]], [[3, -1]]])  # [prompt, layer, head]
    neg = torch.tensor([[[0, 1]], [[0, 4]]])
    grid = unique_code_scores(pos, neg)
    assert grid.tolist() == [[2.0, 0.0]]  # head 0: codes {2, 3} never negative; head 1: none
    norm = unique_code_scores(pos, neg, normalize=True)
    assert norm.tolist() == [[pytest.approx(2 / 3), 0.0]]  # union {0, 2, 3}


def test_discrete_scores_on_ioi(tiny_model, word_tokenizer):
    task = ioi(word_tokenizer, n_prompts=10)
    scores = discrete_sae_head_scores(tiny_model, task, n_latents=50, steps=60, only_correct=False)
    assert scores.labels == [f"a{layer}.h{h}" for layer in range(2) for h in range(4)]
    assert scores.method == "discrete-sae" and scores.task == "ioi"
    assert bool((scores.values >= 0).all()) and bool((scores.values <= 10).all())
    # Identical positive and negative prompts: no code can be unique to the positive ones.
    same = discrete_sae_head_scores(tiny_model, task.clean, task.clean, n_latents=50, steps=60)
    assert float(same.values.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="give negative_tokens"):
        discrete_sae_head_scores(tiny_model, task.clean)


def test_only_prompts_the_model_gets_right_are_positive(tiny_model, word_tokenizer):
    import dataclasses

    task = ioi(word_tokenizer, n_prompts=10)
    with torch.no_grad():
        logits = tiny_model(task.clean)
    top = logits[torch.arange(10), task.answer_pos].argmax(-1)
    # The (random) model is "right" exactly on the first 4 prompts.
    answers = torch.where(torch.arange(10)[:, None] < 4, top[:, None], (top[:, None] + 1) % tiny_model.cfg.d_vocab)
    rigged = dataclasses.replace(task, answers=answers)
    scores = discrete_sae_head_scores(tiny_model, rigged, n_latents=20, steps=10)
    assert scores.meta["n_positive"] == 4 and scores.meta["n_negative"] == 10
    never = dataclasses.replace(task, answers=(top[:, None] + 1) % tiny_model.cfg.d_vocab)
    with pytest.raises(ValueError, match="gets none of the 10 prompts"):
        discrete_sae_head_scores(tiny_model, never, n_latents=20, steps=10)
