import pytest
import torch
from model_factory import make_model

from circuitkit import names
from circuitkit.ablation import edges as g
from circuitkit.tasks.builders import induction


@pytest.fixture(scope="module")
def configs(word_tokenizer, tiny_model, tiny_attn_only):
    """LayerNorm + learned positions + MLPs; attention-only without norm; RMSNorm + rotary + GQA."""
    gqa = make_model(word_tokenizer, n_layers=2, n_heads=4, normalization_type="RMS",
                     positional_embedding_type="rotary", n_key_value_heads=2, seed=3)
    return {"ln_mlp": tiny_model, "attn_only": tiny_attn_only, "rms_rotary_gqa": gqa}


@pytest.fixture(scope="module")
def task(word_tokenizer):
    return induction(word_tokenizer, n_prompts=3, seq_len=4, seed=0)


CONFIGS = ["ln_mlp", "attn_only", "rms_rotary_gqa"]


def test_graph_edges_and_nodes_follow_names(tiny_model, tiny_attn_only):
    assert g.graph_edges(tiny_model) == names.all_edges(2, 4, has_mlp=True)
    assert g.graph_edges(tiny_attn_only) == names.all_edges(2, 4, has_mlp=False)
    assert g.graph_nodes(tiny_model) == names.all_nodes(2, 4, has_mlp=True)
    index = g.graph_index(tiny_model)
    # every edge has its own matrix cell
    assert len({index.cell(e) for e in index.edges}) == len(index.edges) == int(index.valid_mask().sum())


@pytest.mark.parametrize("config", CONFIGS)
def test_keeping_all_edges_reproduces_model(configs, task, config):
    model = configs[config]
    source = g.ablation_source(model, task, "corrupted")
    with torch.no_grad():
        expected = model(task.clean)
        logits = g.run_with_edges(model, task.clean, g.graph_edges(model), source)
    assert torch.allclose(logits, expected, atol=1e-5)
    # graph mode is switched off again afterwards
    assert not model.cfg.use_split_qkv_input


@pytest.mark.parametrize("config", CONFIGS)
def test_ablating_everything_gives_the_source_run(configs, task, config):
    model = configs[config]
    source = g.ablation_source(model, task, "corrupted")
    into_logits = [e for e in g.graph_edges(model) if names.parse_edge(e).child == names.LOGITS]
    with torch.no_grad():
        corrupted = model(task.corrupted)
        assert torch.allclose(g.run_with_edges(model, task.clean, [], source), corrupted, atol=1e-5)
        only_logits = g.run_with_edges(model, task.clean, None, source, ablate_edges=into_logits)
        assert torch.allclose(only_logits, corrupted, atol=1e-5)
        assert not torch.allclose(model(task.clean), corrupted, atol=1e-3)


def _slow_single_edge(model, tokens, source, edge_name):
    """The obvious way: cache the clean run; shift the child's input by (source - clean) of the parent."""
    e = names.parse_edge(edge_name)
    # TransformerLens's own per-head results, independent of graph.head_results
    model.cfg.use_attn_result = True
    try:
        with g.graph_mode(model), torch.no_grad():
            _, cache = model.run_with_cache(tokens)
    finally:
        model.cfg.use_attn_result = False
    parent = names.parse_node(e.parent)
    if parent.kind == "input":
        clean_out = cache["blocks.0.hook_resid_pre"]
    elif parent.kind == "head":
        clean_out = cache[f"blocks.{parent.layer}.attn.hook_result"][:, :, parent.head]
    else:
        clean_out = cache[f"blocks.{parent.layer}.hook_mlp_out"]
    shift = source[e.parent] - clean_out
    child = names.parse_node(e.child)
    if child.kind == "head":
        hook_name = f"blocks.{child.layer}.hook_{e.qkv}_input"

        def hook(x, hook):
            x = x.clone()
            x[:, :, child.head] += shift
            return x
    else:
        hook_name = (f"blocks.{child.layer}.hook_mlp_in" if child.kind == "mlp"
                     else f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")

        def hook(x, hook):
            return x + shift
    with g.graph_mode(model), torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])


@pytest.mark.parametrize("config", ["ln_mlp", "rms_rotary_gqa"])
@pytest.mark.parametrize("edge", ["a0.h1->a1.h2<k>", "input->a1.h0<q>", "a0.h3->a1.h1<v>", "a0.h2->m0",
                                  "m0->a1.h3<k>", "a1.h0->logits", "input->m1"])
@pytest.mark.parametrize("kind", ["corrupted", "mean"])
def test_single_edge_matches_slow_implementation(configs, task, config, edge, kind):
    model = configs[config]
    source = g.ablation_source(model, task, kind)
    with torch.no_grad():
        fast = g.run_with_edges(model, task.clean, None, source, ablate_edges=[edge])
        keep = g.run_with_edges(model, task.clean, [x for x in g.graph_edges(model) if x != edge], source)
    slow = _slow_single_edge(model, task.clean, source, edge)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(keep, slow, atol=1e-5)
    assert not torch.allclose(fast, model(task.clean), atol=1e-6)  # the edge mattered


def test_batched_masks_equal_separate_runs(tiny_model, task):
    index = g.graph_index(tiny_model)
    source = g.ablation_source(tiny_model, task, "resample", seed=1)
    edges = ["a0.h0->a1.h1<q>", "m0->logits", "input->a0.h2<v>"]
    n = len(task)
    masks = torch.stack([index.mask([e]) for e in edges]).repeat_interleave(n, 0)
    tokens = task.clean.repeat(len(edges), 1)
    src = {k: v.repeat(len(edges), 1, 1) for k, v in source.items()}
    with torch.no_grad():
        batched = g.run_with_mask(tiny_model, tokens, masks, src)
        for i, e in enumerate(edges):
            single = g.run_with_edges(tiny_model, task.clean, None, source, ablate_edges=[e])
            assert torch.allclose(batched[i * n:(i + 1) * n], single, atol=1e-5)


def test_ablation_sources(tiny_model, task):
    corrupted = g.ablation_source(tiny_model, task, "corrupted")
    direct = g.node_outputs(tiny_model, task.corrupted)
    assert set(corrupted) == set(g.graph_nodes(tiny_model)) - {names.LOGITS}
    assert torch.equal(corrupted["a1.h2"], direct["a1.h2"])
    mean = g.ablation_source(tiny_model, task, "mean")
    clean = g.node_outputs(tiny_model, task.clean)
    assert mean["m1"].shape == (1, task.clean.shape[1], 32)
    assert torch.allclose(mean["m1"][0], clean["m1"].mean(0))
    zero = g.ablation_source(tiny_model, task, "zero")
    assert float(zero["input"].abs().sum()) == 0.0
    resampled = g.ablation_source(tiny_model, task, "resample", seed=0)
    # each prompt reads some other prompt's outputs
    for i in range(len(task)):
        matches = [j for j in range(len(task)) if torch.equal(resampled["a0.h0"][i], clean["a0.h0"][j])]
        assert matches and i not in matches
    # head outputs plus biases sum to the final residual
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(task.clean)
    total = sum(clean.values()) + sum(tiny_model.blocks[i].attn.b_O + tiny_model.blocks[i].mlp.b_out for i in range(2))
    assert torch.allclose(total, cache["blocks.1.hook_resid_post"], atol=1e-5)


def test_bad_input(tiny_model, tiny_attn_only, task):
    source = g.ablation_source(tiny_model, task)
    with pytest.raises(ValueError, match="not in this model's graph"):
        g.run_with_edges(tiny_model, task.clean, None, source, ablate_edges=["a1.h0->a0.h1<q>"])
    with pytest.raises(ValueError, match="out of range"):
        g.run_with_edges(tiny_model, task.clean, None, source, ablate_edges=["a0.h9->logits"])
    with pytest.raises(ValueError, match="malformed edge"):
        g.run_with_edges(tiny_model, task.clean, ["a0.h0 to logits"], source)
    with pytest.raises(ValueError, match="attention-only"):
        g.graph_index(tiny_attn_only).cell("m0->logits")
    with pytest.raises(ValueError, match="exactly one of keep_edges"):
        g.run_with_edges(tiny_model, task.clean, [], source, ablate_edges=[])
    with pytest.raises(ValueError, match="unknown ablation kind"):
        g.ablation_source(tiny_model, task, "noise")
    with pytest.raises(ValueError, match="lacks node outputs"):
        g.run_with_edges(tiny_model, task.clean, [], {"input": source["input"]})
    with pytest.raises(ValueError, match="must be"):
        g.run_with_edges(tiny_model, task.clean[:, :-1], [], source)
    with pytest.raises(ValueError, match="at least 2 clean prompts"):
        g.ablation_source(tiny_model, task.subset([0]), "resample")
