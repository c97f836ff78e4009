"""Layer-level circuits (circuitkit.circuit.layers): scores against explicit recomputations,
completeness of the mask integral, recovery of the zoo's true circuits projected onto layers, and
the same numbers through a bridge."""

import pytest
import torch

import circuitkit as ck
from circuitkit import names
from circuitkit.circuit import Circuit, evaluate, load_circuit, save_circuit
from circuitkit.circuit.layers import LayerEvaluator, layer_nodes, score_layers
from circuitkit.zoo import list_zoo

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WITH_REFERENCE = [card.name for card in list_zoo() if card.circuit_nodes]


def reference_layers(card) -> set[str]:
    """A card's true circuit seen one level up: the attention block of each head, and each MLP."""
    out = set()
    for node_id in card.circuit_nodes:
        node = names.parse_node(node_id)
        if node.kind == "head":
            out.add(names.site("attn_out", node.layer))
        elif node.kind == "mlp":
            out.add(node_id)
    return out


@pytest.fixture(scope="module")
def tiny(tiny_model):
    model = tiny_model
    return model, ck.induction(model, n_prompts=4, seed=1)


def explicit_metric(model, task, ablated: list[str], ablation: str) -> float:
    """The task metric with ``ablated`` layer outputs replaced by hand: the clean-prompt mean (or
    the matched corrupted output), written as TransformerLens hooks without circuitkit."""
    hooks = {"attn_out": lambda n: f"blocks.{n.layer}.hook_attn_out", "mlp": lambda n: f"blocks.{n.layer}.hook_mlp_out"}
    points = [hooks["attn_out" if names.parse_node(a).kind == "site" else "mlp"](names.parse_node(a)) for a in ablated]
    _, cache = model.run_with_cache(task.clean if ablation == "mean" else task.corrupted)
    fwd = []
    for point in points:
        value = cache[point].mean(0, keepdim=True) if ablation == "mean" else cache[point]
        fwd.append((point, lambda x, hook, value=value: value.expand_as(x)))
    with torch.no_grad():
        return float(task.score(model.run_with_hooks(task.clean, fwd_hooks=fwd)))


@pytest.mark.parametrize("ablation", ["mean", "corrupted"])
def test_exact_scores_equal_an_explicit_ablation(tiny, ablation):
    model, task = tiny
    scores = score_layers(model, task, "exact", ablation=ablation)
    with torch.no_grad():
        full = float(task.score(model(task.clean)))
    expected = torch.tensor([explicit_metric(model, task, [n], ablation) - full for n in layer_nodes(model)])
    assert scores.labels == layer_nodes(model) == ["attn_out.0", "m0", "attn_out.1", "m1"]
    torch.testing.assert_close(scores.values, expected, atol=1e-5, rtol=1e-4)
    assert float(expected.abs().max()) > 1e-4  # the check has something to compare


def test_eap_is_the_first_order_term_of_exact_ablation(tiny):
    """EAP = d m / d mask at mask 0, checked by a central difference of the masked metric."""
    model, task = tiny
    ev = LayerEvaluator(model, task, "mean")
    eap = score_layers(model, task, "eap", evaluator=ev)
    eps = 1e-2
    for i, node in enumerate(ev.nodes):
        def masked(m, node=node):
            with torch.no_grad():
                logits = ck.circuit.layers._run(model, ev.tokens, ev.masked_hooks({node: m}))
            return float(task.score(logits))
        slope = (masked(eps) - masked(-eps)) / (2 * eps)
        assert eap.values[i].item() == pytest.approx(slope, rel=2e-2, abs=1e-5)


def test_eap_ig_is_complete(tiny):
    """The scores integrate d m / d mask along the joint path, so they sum to m(∅) - m(full)."""
    model, task = tiny
    ev = LayerEvaluator(model, task, "mean")
    ig = score_layers(model, task, "eap-ig", steps=40, evaluator=ev)
    assert float(ig.values.sum()) == pytest.approx(ev.metric_empty - ev.metric_full, rel=1e-3)
    assert ig.meta["interpolate"] == "mask" and ig.meta["steps"] == 40


@pytest.mark.parametrize("name", WITH_REFERENCE)
@pytest.mark.parametrize("method", ["exact", "eap-ig"])
def test_layer_circuits_recover_the_zoo_true_circuits(name, method):
    """The smallest faithful layer circuit lies inside the card's true circuit seen by layer (the
    tracr rows have layers outside it) and reproduces the model."""
    card = ck.zoo_card(name)
    model = ck.load_model(f"zoo:{name}")
    circuit = ck.discover(model, ck.zoo_task(name), method, level="layers")
    assert set(circuit.nodes) <= reference_layers(card)
    assert circuit.meta["faithfulness"] >= 0.9 and circuit.meta["level"] == "layers"


def test_top_k_threshold_and_a_saved_layer_circuit_evaluate_the_same(tiny, tmp_path):
    model, task = tiny
    scores = score_layers(model, task, "exact")
    order = sorted(scores.labels, key=lambda n: -abs(scores.as_dict()[n]))
    top = ck.discover(model, task, "exact", level="layers", top_k=2, scores=scores)
    assert set(top.nodes) == set(order[:2])
    cut = abs(scores.as_dict()[order[1]])
    assert set(ck.discover(model, task, "exact", level="layers", threshold=cut, scores=scores).nodes) == set(order[:2])
    save_circuit(top, tmp_path / "c.json")
    again = evaluate(model, task, load_circuit(tmp_path / "c.json"))
    assert again.faithfulness == pytest.approx(top.meta["faithfulness"], abs=1e-6)
    full = Circuit.from_nodes_edges(layer_nodes(model))
    assert evaluate(model, task, full).faithfulness == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "acdc"}, r"level='layers' scores whole attention blocks and MLPs with \('eap-ig', 'eap', 'exact'\)"),
    ({"method": "eap", "by_pos": True}, "drop by_pos"),
    ({"method": "eap-ig", "interpolate": "inputs"}, "ablation masks"),
    ({"method": "eap", "threshold": float("nan")}, "finite"),
    ({"method": "eap", "level": "heads"}, r"unknown level 'heads'; choose one of \('edges', 'layers'\)"),
])
def test_layer_discovery_refuses_what_it_cannot_do(tiny, kwargs, match):
    model, task = tiny
    kwargs = {"level": "layers", **kwargs}
    with pytest.raises(ValueError, match=match):
        ck.discover(model, task, **kwargs)


def test_bridge_layer_scores_equal_hooked_transformer(tmp_path, word_tokenizer):
    """A family both backends load: the layer scores agree to 1e-4 of scale."""
    from model_factory import save_hf_folder

    _, path = save_hf_folder(tmp_path, "llama", word_tokenizer)
    results = {}
    for kind in ("hooked", "bridge"):
        model = ck.load_model(path, backend=kind)
        task = ck.induction(model, n_prompts=3, seed=2)
        results[kind] = torch.stack([score_layers(model, task, m, steps=4).values for m in ("exact", "eap", "eap-ig")])
    scale = float(results["hooked"].abs().max())
    assert scale > 1e-6
    torch.testing.assert_close(results["bridge"], results["hooked"], atol=1e-4 * scale + 2e-6, rtol=0)
