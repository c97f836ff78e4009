"""Streamed, memory-budgeted attribution against the obvious computation: every receiver's gradient
kept from one split-input pass over all prompts, and the same method run unbatched."""

import pytest
import torch
from architectures import family_model
from oracles import split_input_edge_matrix

from circuitkit.ablation import edges as g
from circuitkit.attribution import eap, eap_ig
from circuitkit.attribution.common import budget_batch_size, memory_per_prompt
from circuitkit.tasks.builders import induction

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def task(word_tokenizer):
    return induction(word_tokenizer, n_prompts=5, seq_len=4, seed=1)


def _one_prompt(model, task, method="eap"):
    """What one prompt costs in the budget: its activations and its share of the q / k / v rebuild."""
    cfg = model.cfg
    n_pos = task.clean.shape[1]
    return memory_per_prompt(model, g.graph_index(model), n_pos, method) + 8 * cfg.n_heads * cfg.d_model * n_pos * 4


def _budget(model, task, n_prompts, method="eap"):
    """A max_memory that holds ``n_prompts`` prompts per batch and not one more."""
    one = _one_prompt(model, task, method)
    return one * n_prompts + one // 2


# pre-norm GPT-2, parallel attention + MLP with rotary (Pythia), grouped-query attention (Llama-3)
@pytest.mark.parametrize("family", ["gpt2", "pythia-gpt-neox", "llama-3"])
def test_streamed_eap_equals_every_gradient_kept(word_tokenizer, task, family):
    model = family_model(family, word_tokenizer)
    index = g.graph_index(model)
    oracle = split_input_edge_matrix(model, task, g.ablation_source(model, task, "corrupted"))
    expected = oracle.reshape(-1)[index.flat_edge_index()]
    assert expected.abs().max() > 1e-2
    for max_memory in (None, _budget(model, task, 2)):  # one batch; batches of 2, 2, 1
        got = eap(model, task, ablation="corrupted", progress=False, max_memory=max_memory)
        torch.testing.assert_close(got.values, expected, atol=1e-5, rtol=1e-4)


# runs over a batch share one contraction (at most _Receivers.MAX_RUNS runs each): 9 steps are 8 + 1
@pytest.mark.parametrize(("family", "steps"), [("gpt2", 3), ("gpt2", 9), ("pythia-gpt-neox", 2), ("llama-3", 3)])
def test_eap_ig_equals_every_run_kept_apart(word_tokenizer, task, family, steps):
    model = family_model(family, word_tokenizer)
    index = g.graph_index(model)
    oracle = split_input_edge_matrix(model, task, g.ablation_source(model, task, "corrupted"), steps=steps)
    expected = oracle.reshape(-1)[index.flat_edge_index()]
    assert expected.abs().max() > 1e-2
    for max_memory in (None, _budget(model, task, 2, "eap_ig")):
        got = eap_ig(model, task, steps=steps, ablation="corrupted", progress=False, max_memory=max_memory)
        torch.testing.assert_close(got.values, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("family", "kwargs"), [
    ("gemma-2", dict(steps=2, ablation="resample", interpolate="activations")),  # post-norm, GQA
    ("pythia-gpt-neox", dict(steps=3, ablation="mean")),  # parallel attention + MLP
    ("pythia-gpt-neox", dict(steps=1, qk_fix=True)),
])
def test_budgeted_batches_equal_one_batch(word_tokenizer, task, family, kwargs):
    model = family_model(family, word_tokenizer)
    method = "qk_fix" if kwargs.get("qk_fix") else "eap_ig"
    small = max(_budget(model, task, 2, method), _budget(model, task, 2, "eap_ig"))
    assert budget_batch_size(model, g.graph_index(model), task, method, None, small) == 2
    whole = eap_ig(model, task, progress=False, **kwargs)
    split = eap_ig(model, task, progress=False, max_memory=small, **kwargs)
    torch.testing.assert_close(split.values, whole.values, atol=1e-5, rtol=1e-4)


def test_too_small_a_budget_is_refused_before_any_work(tiny_model, task):
    runs = []
    handle = tiny_model.embed.register_forward_hook(lambda *args: runs.append(1))
    try:
        for method, call in (("eap", eap), ("eap_ig", eap_ig)):
            one = _one_prompt(tiny_model, task, method)
            with pytest.raises(ValueError, match=rf"{method}: one prompt of 8 tokens needs about .* max_memory"):
                call(tiny_model, task, progress=False, max_memory=one // 2)
        with pytest.raises(ValueError, match="max_memory must be a positive number of bytes"):
            eap(tiny_model, task, progress=False, max_memory=-1)
    finally:
        handle.remove()
    assert runs == []


def test_memory_estimate_grows_with_the_work(word_tokenizer):
    small = family_model("gpt2", word_tokenizer)
    index = g.graph_index(small)
    per = {m: memory_per_prompt(small, index, 16, m) for m in ("eap", "eap_ig", "qk_fix")}
    assert per["eap"] < per["eap_ig"] < per["qk_fix"]
    assert memory_per_prompt(small, index, 32, "eap") > 2 * memory_per_prompt(small, index, 16, "eap") * 0.99


def test_batched_sources_are_the_ablation_sources(word_tokenizer, task):
    """batch_source in batches of 2 gives, for every ablation kind, the rows of ablation_source
    (one batch of all prompts)."""
    from circuitkit.ablation.edges import batch_source
    from circuitkit.ablation.kinds import ABLATION_KINDS
    from circuitkit.attribution.common import source_rows

    model = family_model("gpt2", word_tokenizer)
    idx = torch.tensor([1, 3, 4])
    for kind in ABLATION_KINDS:
        whole = source_rows(g.ablation_source(model, task, kind, seed=2), idx)
        batched = batch_source(model, task, kind, 2, 2)(idx)
        assert set(batched) == set(whole), kind
        for node, value in whole.items():
            torch.testing.assert_close(batched[node].expand_as(value), value, atol=1e-5, rtol=1e-5, msg=kind)


def test_a_post_norm_run_frees_its_differences_without_the_cycle_collector(word_tokenizer, task):
    """Each IG run on a post-norm model clones the sender differences; the hooks' closures and the
    recorded tensors' graphs form reference cycles, so the clone must not stay reachable from them
    (it would live until the cyclic collector runs: a block per run on top of the estimate)."""
    import gc

    model = family_model("gemma-2", word_tokenizer)
    n_upstream = len(g.graph_index(model).upstream)
    gc.collect()
    gc.disable()
    try:
        eap_ig(model, task, steps=3, ablation="corrupted", progress=False)
        left = [o for o in gc.get_objects()
                if isinstance(o, torch.Tensor) and o.dim() == 3 and o.shape[0] == n_upstream]
    finally:
        gc.enable()
    assert left == []


@pytest.mark.parametrize(("family", "ablation"), [("gpt2", "corrupted"), ("llama-3", "resample")])
def test_differences_written_from_the_source_run_equal_those_from_per_node_outputs(word_tokenizer, task, family,
                                                                                   ablation):
    """Without a source given, a per-prompt source (corrupted, resampled) writes each layer's heads
    into the difference block from its hook_z; given as per-node outputs, it is copied node by node."""
    from circuitkit.ablation.edges import PromptSource, batch_source

    model = family_model(family, word_tokenizer)
    assert isinstance(batch_source(model, task, ablation, 2, 2), PromptSource)
    source = g.ablation_source(model, task, ablation, seed=2)
    for method, kw in ((eap, {}), (eap_ig, dict(steps=2))):
        written = method(model, task, ablation=ablation, seed=2, progress=False, **kw)
        copied = method(model, task, ablation=ablation, seed=2, progress=False, source=source, **kw)
        assert written.values.abs().max() > 1e-2
        torch.testing.assert_close(written.values, copied.values, atol=1e-6, rtol=1e-6)


def test_source_rows_of_every_prompt_in_order_are_the_tensors_themselves(word_tokenizer, task):
    from circuitkit.attribution.common import source_rows

    model = family_model("gpt2", word_tokenizer)
    source = g.ablation_source(model, task, "corrupted")
    every = source_rows(source, torch.arange(len(task)))
    assert all(every[n] is v for n, v in source.items())
    reordered = source_rows(source, torch.arange(len(task)).flip(0))
    torch.testing.assert_close(reordered["input"], source["input"].flip(0))
