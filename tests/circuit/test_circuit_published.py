"""Published GPT-2 small circuits: every component and edge exists in a GPT-2-shaped model's edge
graph, so roc_auc can score a discovery against them on the real weights."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitkit import names
from circuitkit.ablation.edges import graph_edges
from circuitkit.circuit import roc_auc
from circuitkit.circuit.published import IOI_CLASSES, PUBLISHED, published_circuit
from circuitkit.scores import Scores


@pytest.fixture(scope="module")
def gpt2_shaped():
    """GPT-2 small's layout (12 layers x 12 heads, MLPs, LayerNorm) at a tiny width; random weights."""
    cfg = HookedTransformerConfig(n_layers=12, n_heads=12, d_model=24, d_head=2, d_mlp=16, d_vocab=8, n_ctx=8,
                                  act_fn="gelu_new", normalization_type="LN", device="cpu", seed=0)
    return HookedTransformer(cfg)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_circuits_name_gpt2_components(name, gpt2_shaped):
    circuit = published_circuit(name)
    assert circuit.meta["model"] == "gpt2" and "arXiv" in circuit.meta["paper"]
    components = set(names.model_components(gpt2_shaped))
    inner = [n for n in circuit.nodes if n not in (names.INPUT, names.LOGITS)]
    assert inner and set(inner) <= components
    every = graph_edges(gpt2_shaped)
    assert set(circuit.edges) <= set(every)
    # random edge scores can be ranked against it at its level
    scores = Scores(torch.rand(len(every), generator=torch.Generator().manual_seed(0)), every, "random")
    level = "edge" if circuit.edges else "node"
    assert 0.3 < roc_auc(scores, circuit, level=level) < 0.7
    # the reference's own edges ranked first score 1
    own = set(circuit.edges) if circuit.edges else None
    if own:
        ranked = Scores(torch.tensor([1.0 if e in own else 0.0 for e in every]), every, "oracle")
        assert roc_auc(ranked, circuit, level="edge") == 1.0


def test_ioi_has_the_papers_26_heads_and_paths():
    heads = [h for members in IOI_CLASSES.values() for h in members]
    assert len(heads) == len(set(heads)) == 26
    circuit = published_circuit("gpt2-ioi")
    assert "a9.h9->logits" in circuit.edges and "a7.h3->a9.h9<q>" in circuit.edges
    assert "a2.h2->a5.h5<k>" in circuit.edges and "a0.h1->a7.h3<v>" in circuit.edges
    assert "a8.h6->a9.h9<q>" in circuit.edges and "a11.h10->a9.h9<q>" not in circuit.edges  # later never feeds earlier
    with pytest.raises(KeyError, match="gpt2-ioi"):
        published_circuit("gpt2-nope")
