"""Edge pruning (learned hard-concrete edge masks) against circuits known to be true: the hand-built
zoo models' reference circuits, and a random model whose dead heads must be pruned."""

import pytest
import torch

from circuitkit.circuit import Circuit, roc_auc
from circuitkit.circuit.discover import discover, edge_pruning
from circuitkit.models import load_model
from circuitkit.zoo import zoo_card, zoo_task


@pytest.mark.parametrize("name", ["induction-handbuilt"])  # every zoo model: benchmarks/discovery.py
def test_edge_pruning_recovers_the_hand_built_circuits(name):
    card = zoo_card(name)
    model = load_model(f"zoo:{name}")
    task = zoo_task(name, model)
    task = task.subset(torch.arange(min(len(task), 8)))  # 8 prompts and 100 steps keep the test short
    scores = edge_pruning(model, task, steps=100, progress=False)
    hidden = card.evidence.get("mean_ablation_invisible_edges", {})
    assert roc_auc(scores, Circuit.from_card(card), level="edge", ignore=hidden) >= 0.95
    circuit = discover(model, task, "edge-pruning", scores=scores)
    assert circuit.meta["faithfulness"] >= 0.9
    assert float(scores.values.min()) >= 0.0 and float(scores.values.max()) <= 1.0  # gate-open probabilities


def test_edge_pruning_is_deterministic_and_leaves_the_model_untouched(tiny_model, word_tokenizer):
    from circuitkit.tasks.builders import induction

    task = induction(word_tokenizer, n_prompts=4, seq_len=4, seed=0)
    before = [p.detach().clone() for p in tiny_model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in tiny_model.parameters()]
    a = edge_pruning(tiny_model, task, steps=20, seed=3, progress=False)
    b = edge_pruning(tiny_model, task, steps=20, seed=3, progress=False)
    c = edge_pruning(tiny_model, task, steps=20, seed=4, progress=False)
    assert torch.equal(a.values, b.values) and not torch.equal(a.values, c.values)
    assert all(torch.equal(x, y) for x, y in zip(before, tiny_model.parameters(), strict=True))
    assert all((g is None and p.grad is None) or torch.equal(g, p.grad)  # no gradient reached the weights
               for g, p in zip(grads, tiny_model.parameters(), strict=True))
    assert all(p.requires_grad for p in tiny_model.parameters())  # restored
    assert a.method == "edge-pruning" and a.meta["target_edges"] == len(a) // 10


def test_edge_pruning_bad_input(tiny_model, word_tokenizer):
    from circuitkit.tasks.builders import induction

    task = induction(word_tokenizer, n_prompts=4, seq_len=4, seed=0)
    with pytest.raises(ValueError, match=r"target_edges must be between 1 and the graph's \d+ edges"):
        edge_pruning(tiny_model, task, target_edges=0)
    with pytest.raises(ValueError, match=r"steps >= 1, lr > 0"):
        edge_pruning(tiny_model, task, steps=0)
