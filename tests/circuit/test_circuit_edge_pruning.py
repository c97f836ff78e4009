"""Edge pruning (learned hard-concrete edge masks) against circuits known to be true: the hand-built
and tracr zoo models' reference circuits; its gate mask against exact edge ablation."""

import pytest
import torch

from circuitkit.ablation.edges import ablation_source, graph_index, run_with_edges, run_with_mask
from circuitkit.circuit import roc_auc
from circuitkit.circuit.discovery import discover, edge_pruning
from circuitkit.circuit.discovery.mask_learning import gate_mask
from circuitkit.models import load_model
from circuitkit.tasks.builders import induction
from circuitkit.zoo import reference_circuit, zoo_card, zoo_task


# every zoo model: benchmarks/discovery.py. induction-handbuilt: a clean two-head circuit;
# tracr-hist: 8 edges, whose query / key edges change the output only within a few per cent of
# their live value (saturated attention), so a gradient sees them only in rare gate samples.
@pytest.mark.parametrize(("name", "n_prompts", "steps"), [("induction-handbuilt", 8, 60), ("tracr-hist", 16, 150)])
def test_edge_pruning_recovers_the_reference_circuits(name, n_prompts, steps):
    card = zoo_card(name)
    model = load_model(f"zoo:{name}")
    task = zoo_task(name, model)
    task = task.subset(torch.arange(min(len(task), n_prompts)))
    scores = edge_pruning(model, task, steps=steps, progress=False)
    hidden = card.evidence.get("mean_ablation_invisible_edges", {})
    reference = reference_circuit(card)
    assert roc_auc(scores, reference, level="edge", ignore=hidden) == 1.0
    circuit = discover(model, task, "edge-pruning", scores=scores)
    assert circuit.meta["faithfulness"] >= 0.9
    assert float(scores.values.min()) >= 0.0 and float(scores.values.max()) <= 1.0  # mean open probabilities


def test_gate_mask_equals_exact_ablation_of_the_closed_edges(tiny_model, word_tokenizer):
    """Saturated gates are exact edge ablation (run_with_edges); per-prompt gates are each
    prompt's own masked run."""
    task = induction(word_tokenizer, n_prompts=3, seq_len=4, seed=0)
    index = graph_index(tiny_model)
    source = ablation_source(tiny_model, task, "mean")
    closed = torch.zeros(len(index.edges), dtype=torch.bool)
    closed[torch.randperm(len(index.edges), generator=torch.Generator().manual_seed(0))[:len(index.edges) // 3]] = True
    log_alpha = torch.where(closed, -50.0, 50.0)
    with torch.no_grad():
        for generator in (None, torch.Generator().manual_seed(1)):  # deterministic and sampled gates saturate alike
            masked = run_with_mask(tiny_model, task.clean, gate_mask(index, log_alpha, generator), source)
            exact = run_with_edges(tiny_model, task.clean, None, source,
                                   ablate_edges=[e for e, c in zip(index.edges, closed.tolist(), strict=True) if c])
            assert torch.allclose(masked, exact, atol=1e-5)
        per_prompt = torch.randn(len(task), len(index.edges), generator=torch.Generator().manual_seed(2))
        batched = run_with_mask(tiny_model, task.clean, gate_mask(index, per_prompt), source)
        for i in range(len(task)):
            one = run_with_mask(tiny_model, task.clean[i:i + 1], gate_mask(index, per_prompt[i]), source)
            assert torch.allclose(batched[i:i + 1], one, atol=1e-5)


def test_edge_pruning_is_deterministic_and_leaves_the_model_untouched(tiny_model, word_tokenizer):
    task = induction(word_tokenizer, n_prompts=6, seq_len=4, seed=0)
    before = [p.detach().clone() for p in tiny_model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in tiny_model.parameters()]
    a = edge_pruning(tiny_model, task, steps=6, seed=3, batch_size=4, progress=False)
    b = edge_pruning(tiny_model, task, steps=6, seed=3, batch_size=4, progress=False)
    c = edge_pruning(tiny_model, task, steps=6, seed=4, batch_size=4, progress=False)
    kl = edge_pruning(tiny_model, task, steps=6, seed=3, batch_size=4, objective="kl", progress=False)
    assert torch.equal(a.values, b.values) and not torch.equal(a.values, c.values)
    assert not torch.equal(a.values, kl.values) and kl.metric == "kl" and a.metric == task.metric_name
    assert all(torch.equal(x, y) for x, y in zip(before, tiny_model.parameters(), strict=True))
    assert all((g is None and p.grad is None) or torch.equal(g, p.grad)  # no gradient reached the weights
               for g, p in zip(grads, tiny_model.parameters(), strict=True))
    assert all(p.requires_grad for p in tiny_model.parameters())  # restored
    assert a.method == "edge-pruning" and a.meta["target_edges"] == 0 and a.meta["batch_size"] == 4


def test_edge_pruning_bad_input(tiny_model, word_tokenizer):
    task = induction(word_tokenizer, n_prompts=4, seq_len=4, seed=0)
    n = len(graph_index(tiny_model).edges)
    with pytest.raises(ValueError, match=rf"target_edges must be between 0 and the graph's {n} edges"):
        edge_pruning(tiny_model, task, target_edges=n)
    with pytest.raises(ValueError, match=r"target_edges must be between 0"):
        edge_pruning(tiny_model, task, target_edges=-1)
    with pytest.raises(ValueError, match=r"steps >= 1, lr > 0"):
        edge_pruning(tiny_model, task, steps=0)
    with pytest.raises(ValueError, match=r"price_step > 1"):
        edge_pruning(tiny_model, task, price_step=1.0)
    with pytest.raises(ValueError, match=r"objective must be one of"):
        edge_pruning(tiny_model, task, objective="l1")
