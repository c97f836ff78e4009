from __future__ import annotations

import dataclasses

import pytest
import torch

from circuitkit.heads import (
    NeedlePrompt,
    needle_prompts,
    retrieval_heads,
    retrieval_scores,
    retrieval_scores_generate,
    rouge1_recall,
)
from circuitkit.heads.toy import RETRIEVAL_HEADS, toy_haystack
from circuitkit.tasks.builders import needle


def test_teacher_forcing_equals_generation(toy_model, toy_task):
    fast = retrieval_scores(toy_model, toy_task, batch_size=7, progress=False)
    slow = retrieval_scores_generate(toy_model, toy_task, progress=False)
    assert fast.meta["n_kept"] == slow.meta["n_kept"] == len(toy_task)  # the toy answers every prompt
    assert torch.equal(fast.meta["per_prompt"], slow.meta["per_prompt"])
    assert torch.equal(fast.values, slow.values)
    assert fast.labels == slow.labels


def test_finds_exactly_the_wired_retrieval_head(toy_model, toy_task):
    scores = retrieval_scores(toy_model, toy_task, progress=False)
    found = set(scores.meta["retrieval_heads"])
    assert found == set(RETRIEVAL_HEADS) == set(retrieval_heads(scores, 0.1))
    assert scores["a1.h0"] == pytest.approx(1.0)
    # every multi-token answer step is a hit, and no other head ever lands on the needle
    assert float(scores.values.sum()) == pytest.approx(1.0)
    assert scores.meta["context_length"][0] == 24 and max(scores.meta["context_length"]) == 48
    assert all(0 <= d < 1 for d in scores.meta["needle_depth"])


def test_trials_answered_wrong_are_not_counted(toy_model, toy_task):
    prompts = needle_prompts(toy_task)
    # Cutting the question's final "is" makes the model answer "is" instead of the value.
    broken = [dataclasses.replace(p, tokens=p.tokens[:-1]) if i % 2 else p for i, p in enumerate(prompts)]
    scores = retrieval_scores(toy_model, broken, progress=False)
    assert scores.meta["kept"].tolist() == [i % 2 == 0 for i in range(len(prompts))]
    assert scores["a1.h0"] == pytest.approx(1.0)
    every = retrieval_scores(toy_model, broken, min_recall=-1.0, progress=False)
    # A broken trial misses step 0 (it produces "is") but still fetches the value's second token:
    # 0.5 per broken trial, 1 per intact one.
    assert every["a1.h0"] == pytest.approx(0.75)
    assert torch.equal(every.values, retrieval_scores_generate(toy_model, broken, min_recall=-1.0, progress=False).values)


def test_model_that_never_answers_is_a_clear_error(toy_model, toy_task):
    prompts = [dataclasses.replace(p, tokens=p.tokens[:-1]) for p in needle_prompts(toy_task)]
    with pytest.raises(ValueError, match="answers none of the .* needle prompts"):
        retrieval_scores(toy_model, prompts, progress=False)


def test_rouge1_recall_counts_multiplicity():
    assert rouge1_recall([5, 5, 7], [5, 7]) == 1.0
    assert rouge1_recall([5, 9], [5, 5]) == 0.5
    assert rouge1_recall([], [1, 2, 3]) == 0.0


def test_needle_not_in_context(toy_model, toy_task):
    p = needle_prompts(toy_task)[0]
    tokens = p.tokens.clone()
    tokens[p.needle_start: p.needle_end] = tokens[1]  # overwrite the needle value with haystack
    with pytest.raises(ValueError, match="needle is not in the context"):
        retrieval_scores(toy_model, [NeedlePrompt(tokens, p.needle_start, p.needle_end, p.answer)], progress=False)
    with pytest.raises(ValueError, match="needle is not in the context"):
        retrieval_scores(toy_model, [NeedlePrompt(p.tokens, len(p.tokens) + 2, len(p.tokens) + 4, p.answer)])
    bad_task = dataclasses.replace(toy_task, clean=toy_task.clean.clone())
    bad_task.clean[3, bad_task.positions["needle_start"][3]] = bad_task.clean[3, 1]
    with pytest.raises(ValueError, match="needle prompt 3: .*needle is not in the context"):
        retrieval_scores_generate(toy_model, bad_task, progress=False)


def test_context_longer_than_n_ctx(toy_model):
    from circuitkit.heads.toy import toy_needle_task

    long_task = toy_needle_task(toy_model, context_lengths=(80,), depths=(0.5,))
    with pytest.raises(ValueError, match="n_ctx=80; use context lengths <= 79"):
        retrieval_scores(toy_model, long_task, progress=False)


def test_empty_haystack(toy_model):
    with pytest.raises(ValueError, match="haystack is empty"):
        needle(toy_model, context_lengths=(24,), haystack="   ")
    with pytest.raises(ValueError, match="haystack / context is empty"):
        retrieval_scores(toy_model, [NeedlePrompt(torch.tensor([], dtype=torch.long), 0, 1, [7])])


def test_task_without_needle_span(toy_model, toy_task):
    plain = dataclasses.replace(toy_task, positions={})
    with pytest.raises(ValueError, match="has no needle span .*circuitkit.needle"):
        retrieval_scores(toy_model, plain)
    with pytest.raises(ValueError, match="no needle prompts given"):
        retrieval_scores(toy_model, [])


def test_haystack_too_short_for_length(toy_model):
    with pytest.raises(ValueError, match="none of the .* prompts could be built"):
        needle(toy_model, context_lengths=(40,), haystack=toy_haystack(n_words=5))


def test_any_tokenizer_single_token_answers_match_generation(bpe_tokenizer):
    """A random GPT-2-style BPE model on the bundled haystack: with one-token answers every step is
    the first, so teacher forcing equals generation even on trials the model gets wrong."""
    from tests.conftest import make_model

    model = make_model(bpe_tokenizer, n_ctx=96, seed=5)
    task = needle(model, context_lengths=(48, 80), depths=(0.0, 0.5, 1.0), values=("1", "2", "3", "5"))
    assert all(len(a) == 1 for a in task.meta["answer_tokens"])
    fast = retrieval_scores(model, task, min_recall=-1.0, progress=False)
    slow = retrieval_scores_generate(model, task, min_recall=-1.0, progress=False)
    assert torch.equal(fast.meta["per_prompt"], slow.meta["per_prompt"])
    assert torch.equal(fast.meta["recall"], slow.meta["recall"])


def test_memory_budget_chunks_prompts_and_refuses_what_cannot_fit(toy_model, toy_task):
    from circuitkit.heads.retrieval import forward_memory_per_prompt

    longest = max(len(p.tokens) + len(p.answer) - 1 for p in needle_prompts(toy_task))
    one = forward_memory_per_prompt(toy_model, longest)
    whole = retrieval_scores(toy_model, toy_task, progress=False)
    runs = []
    handle = toy_model.embed.register_forward_hook(lambda *args: runs.append(1))
    try:
        chunked = retrieval_scores(toy_model, toy_task, progress=False, max_memory=2.5 * one)  # 2 prompts a batch
        assert len(runs) == -(-len(toy_task) // 2)
        assert torch.equal(chunked.meta["per_prompt"], whole.meta["per_prompt"])
        runs.clear()
        with pytest.raises(ValueError, match="one prompt of .* tokens needs about .* max_memory"):
            retrieval_scores(toy_model, toy_task, progress=False, max_memory=one / 2)
        assert runs == []
    finally:
        handle.remove()
