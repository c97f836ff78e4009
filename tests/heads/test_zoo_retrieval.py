"""Retrieval heads on the zoo's retrieval models, against their cards' recorded ground truth.

``retrieval-handbuilt`` (hand-built: the card lists its retrieval heads) must be found exactly and
its top heads' ablation must destroy needle accuracy while random ablations keep it; on
``needle-trained`` retrieval is shared by its last layer's heads, which must be found and must carry it.
"""

from __future__ import annotations

import pytest
import torch

from circuitkit import load_model, names, zoo_card, zoo_task
from circuitkit.heads import (
    needle_prompts,
    retrieval_causal_check,
    retrieval_scores,
    retrieval_scores_generate,
)


def _zoo_model(name: str):
    return load_model(f"zoo:{name}", device="cpu"), zoo_card(name)


@pytest.fixture(scope="module")
def handbuilt():
    model, card = _zoo_model("retrieval-handbuilt")
    return model, card, zoo_task(card, model)


@pytest.fixture(scope="module")
def handbuilt_scores(handbuilt):
    model, _, task = handbuilt
    return retrieval_scores(model, task, progress=False)


def test_handbuilt_retrieval_heads_exact(handbuilt, handbuilt_scores):
    _, card, task = handbuilt
    scores = handbuilt_scores
    found, truth = set(scores.meta["retrieval_heads"]), set(card.evidence["retrieval_heads"])
    assert truth, "the card must record its retrieval heads"
    assert scores.meta["n_kept"] == len(task)  # the hand-built model answers every needle
    precision, recall = len(found & truth) / len(found), len(found & truth) / len(truth)
    assert precision == 1.0 and recall == 1.0


def test_handbuilt_teacher_forcing_equals_generation(handbuilt):
    model, _, task = handbuilt
    prompts = needle_prompts(task)[::5]
    fast = retrieval_scores(model, prompts, progress=False)
    slow = retrieval_scores_generate(model, prompts, progress=False)
    assert torch.equal(fast.meta["per_prompt"], slow.meta["per_prompt"])


def test_handbuilt_causal_check(handbuilt, handbuilt_scores):
    model, card, task = handbuilt
    prompts = needle_prompts(task)[::3]  # 10 of the 30 trials keep the test fast
    check = retrieval_causal_check(model, prompts, handbuilt_scores, k=len(card.evidence["retrieval_heads"]),
                                   n_random=3, seed=0, progress=False)
    assert check.full_accuracy == 1.0 and check.top_accuracy == 0.0
    # random draws avoiding the previous-token head that feeds the retrieval head keep the needle
    feeders = set(card.evidence.get("previous_token_heads", []))
    clean_draws = [acc for draw, acc in zip(check.random_heads, check.random_accuracies, strict=True)
                   if not feeders & set(draw)]
    assert clean_draws and all(acc == 1.0 for acc in clean_draws)


def test_needle_trained_retrieval_is_shared_by_its_last_layer_heads():
    """needle-trained answers every needle's whole (multi-token) value; Wu et al.'s score finds the
    heads that copy it, all in its last layer (layer 0 only feeds them), and they share the work:
    ablating them all removes retrieval, ablating any one of the top three leaves most of it. (The
    top-k vs random-heads check of Wu et al. does not apply: every other head is a layer-0 head
    that every path reads.)"""
    from circuitkit.heads.causal import needle_accuracy

    model, card = _zoo_model("needle-trained")
    task = zoo_task(card, model)
    scores = retrieval_scores(model, task, progress=False)
    found = list(scores.meta["retrieval_heads"])
    assert set(card.evidence["retrieval_heads"]) <= set(found)  # attention on the needle => retrieval score
    assert len(found) >= 3
    assert all(names.parse_node(h).layer == model.cfg.n_layers - 1 for h in found)

    def accuracy(heads, which="first"):
        return needle_accuracy(model, task, ablate=heads, accuracy=which)[0]

    assert accuracy([]) >= 0.95 and accuracy([], "full") >= 0.95
    assert accuracy(found) <= 0.05
    for head in found[:3]:  # the three highest-scoring
        assert accuracy([head]) >= 0.75
