"""Published circuits (GPT-2 small's IOI and greater-than, attn-only-4l's docstring): every component
and edge exists in a model of the real shape, and the edges equal the ground-truth sets auto-circuit
ships (``data/auto_circuit_true_edges.json``, written by ``make_published_fixtures.py``)."""

import json
from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitkit import names
from circuitkit.ablation.edges import graph_edges
from circuitkit.circuit import roc_auc
from circuitkit.circuit.published import (
    DOCSTRING_EDGES,
    GREATER_THAN_PAPER_HEADS,
    IOI_CLASSES,
    PUBLISHED,
    published_circuit,
)
from circuitkit.scores import Scores

AUTO_CIRCUIT = json.loads((Path(__file__).parent / "data" / "auto_circuit_true_edges.json").read_text())


def shaped(n_layers: int, n_heads: int, has_mlp: bool):
    """A model of the real layout at a tiny width; random weights."""
    cfg = HookedTransformerConfig(n_layers=n_layers, n_heads=n_heads, d_model=2 * n_heads, d_head=2, d_mlp=16, d_vocab=8,
                                  n_ctx=8, act_fn="gelu_new", normalization_type="LN", attn_only=not has_mlp,
                                  device="cpu", seed=0)
    return HookedTransformer(cfg)


@pytest.fixture(scope="module")
def models():
    return {k: shaped(**v["shape"]) for k, v in PUBLISHED.items()}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_circuits_name_the_real_models_components(name, models):
    circuit = published_circuit(name)
    model = models[name]
    assert circuit.meta["model"] == PUBLISHED[name]["model"] and circuit.meta["paper"]
    assert circuit.n_layers == model.cfg.n_layers
    components = set(names.model_components(model))
    inner = [n for n in circuit.nodes if n not in (names.INPUT, names.LOGITS)]
    assert inner and set(inner) <= components
    every = graph_edges(model)
    assert len(every) == AUTO_CIRCUIT["n_edges"][PUBLISHED[name]["model"]]  # auto-circuit's graph has the same edges
    assert set(circuit.edges) <= set(every)
    # random edge scores rank near chance against it, the reference's own edges first rank 1
    scores = Scores(torch.rand(len(every), generator=torch.Generator().manual_seed(0)), every, "random")
    assert 0.3 < roc_auc(scores, circuit, level="edge") < 0.7
    own = set(circuit.edges)
    ranked = Scores(torch.tensor([1.0 if e in own else 0.0 for e in every]), every, "oracle")
    assert roc_auc(ranked, circuit, level="edge") == 1.0


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_edges_equal_auto_circuits_ground_truth(name):
    ours, theirs = set(published_circuit(name).edges), set(AUTO_CIRCUIT["circuits"][name])
    assert ours == theirs, (sorted(ours - theirs)[:5], sorted(theirs - ours)[:5])


def test_ioi_has_the_papers_26_heads_and_paths():
    heads = [h for members in IOI_CLASSES.values() for h in members]
    assert len(heads) == len(set(heads)) == 26
    circuit = published_circuit("gpt2-ioi")
    assert {n for n in circuit.nodes if names.parse_node(n).kind == "head"} == set(heads)
    assert "a9.h9->logits" in circuit.edges and "a7.h3->a9.h9<q>" in circuit.edges
    assert "a2.h2->a5.h5<k>" in circuit.edges and "a0.h1->a7.h3<v>" in circuit.edges
    assert "m5->a7.h3<v>" in circuit.edges  # paths run through the MLPs between their ends
    assert "a11.h10->a9.h9<q>" not in circuit.edges  # later never feeds earlier
    with pytest.raises(KeyError, match="gpt2-ioi"):
        published_circuit("gpt2-nope")


def test_greater_than_says_how_it_differs_from_the_paper():
    circuit = published_circuit("gpt2-greater-than")
    heads = {n for n in circuit.nodes if names.parse_node(n).kind == "head"}
    assert set(GREATER_THAN_PAPER_HEADS) - heads == {"a5.h1", "a8.h8"}
    assert "5.1" in circuit.meta["granularity"] and "8.8" in circuit.meta["granularity"]
    assert {"m9->logits", "m0->a6.h9<q>", "input->a0.h3<k>"} <= set(circuit.edges)


def test_docstring_records_the_token_roles_of_each_edge():
    circuit = published_circuit("attn-only-4l-docstring")
    assert set(circuit.meta["positions"]) == set(circuit.edges) == set(DOCSTRING_EDGES)
    assert circuit.meta["positions"]["a3.h0->logits"] == ["param_3"]
    assert not any(names.parse_node(n).kind == "mlp" for n in circuit.nodes)
