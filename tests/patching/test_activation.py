"""Batched activation patching equals transformer_lens.patching on three model configurations."""

from __future__ import annotations

import pytest
import torch
from model_factory import make_model
from oracles import TL_FUNCTIONS, transformer_lens_grid

from circuitkit import names
from circuitkit.patching import activation_patching, patch_head_sets
from circuitkit.patching.engine import prepare_runs
from circuitkit.tasks.task import Task

CONFIGS = {
    "gpt2_ln_learned": dict(n_layers=2, seed=3),
    "rms_rotary_gqa": dict(n_layers=2, normalization_type="RMS", positional_embedding_type="rotary",
                           rotary_dim=8, n_key_value_heads=2, seed=4),
    # larger weights: a random attention-only model's heads barely react to q / k otherwise
    "attn_only": dict(n_layers=2, attn_only=True, normalization_type=None, initializer_range=0.5, seed=5),
}



def random_task(model, n_prompts: int = 2, seq: int = 4, seed: int = 0, metric="logit_diff") -> Task:
    """Random clean / corrupted token rows: every position differs, so every patch matters."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.cfg.d_vocab
    clean = torch.randint(0, vocab, (n_prompts, seq), generator=g)
    corrupted = torch.randint(0, vocab, (n_prompts, seq), generator=g)
    answers = torch.randint(0, vocab, (n_prompts, 1), generator=g)
    wrong = torch.randint(0, vocab, (n_prompts, 2), generator=g)
    return Task("random", clean, corrupted, answers, wrong, metric=metric)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setups(word_tokenizer):
    out = {}
    for name, overrides in CONFIGS.items():
        model = make_model(word_tokenizer, **overrides)
        out[name] = (model, random_task(model))
    return out


# With the default batch size (every patch of a layer in one pass); tests/models/test_architectures.py
# holds every granularity on every model family to transformer_lens.patching with two patches a pass.
CASES = [("rms_rotary_gqa", target, by_pos) for (target, by_pos) in TL_FUNCTIONS]


@pytest.mark.parametrize("config,target,by_pos", CASES)
def test_matches_transformer_lens(setups, config, target, by_pos):
    model, task = setups[config]
    expected = transformer_lens_grid(model, task, target, by_pos)
    scores = activation_patching(model, task, target, by_pos=by_pos, progress=False)
    assert scores.meta["grid"].shape == expected.shape
    torch.testing.assert_close(scores.meta["grid"], expected.cpu(), atol=1e-4, rtol=0)
    # the patches do move the metric, so equality is not trivially 0 == 0
    assert expected.abs().max() > 1e-2


# batch_size=5 -> two patches per pass, so most passes start after an unchanged prefix of positions
@pytest.mark.parametrize("config,target", [(c, "head_out") for c in CONFIGS]
                         + [("rms_rotary_gqa", "resid_pre"), ("rms_rotary_gqa", "pattern"), ("gpt2_ln_learned", "k")])
def test_noising_matches_transformer_lens(setups, config, target):
    model, task = setups[config]
    expected = transformer_lens_grid(model, task, target, True, direction="noise")
    scores = activation_patching(model, task, target, by_pos=True, direction="noise", batch_size=5, progress=False)
    torch.testing.assert_close(scores.meta["grid"], expected.cpu(), atol=1e-4, rtol=0)
    assert prepare_runs(model, task, "noise", [], [], trim_from_layer=0).prefix_ok  # the prefix-skipping path ran


def shared_prefix_task(model, seed: int = 7) -> Task:
    """Clean and corrupted prompts equal on their first 3 tokens; answers at positions 4-6 of 9,
    so the runs can skip the prefix and the last 2 positions."""
    task = random_task(model, n_prompts=3, seq=9, seed=seed)
    corrupted = task.corrupted.clone()
    corrupted[:, :3] = task.clean[:, :3]
    return Task("shared-prefix", task.clean, corrupted, task.answers, task.wrong_answers, answer_pos=[5, 4, 6])


@pytest.mark.parametrize("config", list(CONFIGS))
def test_runs_skip_positions_that_cannot_change_the_metric(setups, config):
    """Only positions 3..6 differ or are read, yet every grid equals transformer_lens.patching's
    full-length runs (positions outside patch nothing: 0 denoising, 1 noising)."""
    model, _ = setups[config]
    task = shared_prefix_task(model)
    runs = prepare_runs(model, task, "denoise", [], [], trim_from_layer=0)
    assert (runs.same_tokens_before, runs.base_tokens.shape[1]) == (3, 7)
    seen = []
    model.add_hook(lambda name: name.endswith("hook_resid_post"), lambda act, hook: seen.append(act.shape[1]))
    try:
        for target, by_pos, direction in [("head_out", False, "denoise"), ("head_out", True, "noise"),
                                          ("resid_pre", True, "denoise"), ("pattern", True, "denoise"),
                                          ("v", False, "noise"), ("pattern", False, "noise")]:
            seen.clear()
            scores = activation_patching(model, task, target, by_pos=by_pos, direction=direction, batch_size=6,
                                         progress=False)
            # the reference runs cover positions 0..6, every patched run 3..6 or fewer
            assert max(seen) == 7 and sorted(set(seen))[-2] <= 4, (target, by_pos, sorted(set(seen)))
            if not by_pos:
                # in the last layer a head's output or pattern matters only at the answers (4..6),
                # its values at every position (through the keys / values there)
                assert min(seen) == (4 if target == "v" else 3), (target, sorted(set(seen)))
            expected = transformer_lens_grid(model, task, target, by_pos, direction)
            torch.testing.assert_close(scores.meta["grid"], expected.cpu(), atol=1e-4, rtol=0)
            if by_pos:
                outside = [0, 1, 2, 7, 8]
                grid = scores.meta["grid"]
                picked = grid[:, :, outside] if target == "pattern" else grid[:, outside]
                assert torch.all(picked == (0.0 if direction == "denoise" else 1.0))
    finally:
        model.reset_hooks()
    sets = patch_head_sets(model, task, [["a0.h1", "a1.h2"], ["a1.h0"]], progress=False)
    single = activation_patching(model, task, "head_out", heads=["a1.h0"], progress=False)
    assert sets[1] == pytest.approx(single["a1.h0"], abs=1e-6)


@pytest.mark.parametrize("config", ["ln_learned_3l", "rms_rotary_gqa_parallel_3l"])
@pytest.mark.parametrize("target", ["head_out", "q", "pattern", "mlp_out", "k"])
def test_by_position_runs_split_after_the_patch_on_deeper_models(word_tokenizer, monkeypatch, config, target):
    """In its own layer a by-position patch of a head's output, query, pattern or MLP output
    changes only its position, so later positions start one layer up (``run_split``); the grids
    still equal transformer_lens.patching's, with answer-position and full logits, on models deep
    enough that the later part runs through more than the last layer."""
    from circuitkit.patching import engine

    overrides = {"ln_learned_3l": dict(n_layers=3, seed=8),
                 "rms_rotary_gqa_parallel_3l": dict(n_layers=3, normalization_type="RMS", positional_embedding_type="rotary",
                                                    rotary_dim=8, n_key_value_heads=2, parallel_attn_mlp=True, seed=9)}
    model = make_model(word_tokenizer, **overrides[config])
    task = shared_prefix_task(model)
    full = Task("full-logits", task.clean, task.corrupted, task.answers, task.wrong_answers, answer_pos=task.answer_pos,
                metric=lambda logits, t: task.per_prompt(logits))
    split_calls = []
    real = engine.run_split
    monkeypatch.setattr(engine, "run_split", lambda *a, **k: split_calls.append(a[2]) or real(*a, **k))
    expected = transformer_lens_grid(model, task, target, True)
    for t in (task, full):
        split_calls.clear()
        scores = activation_patching(model, t, target, by_pos=True, batch_size=6, progress=False)
        torch.testing.assert_close(scores.meta["grid"], expected.cpu(), atol=1e-4, rtol=0)
        # keys feed every later position of their own layer: no split for them
        assert (set(split_calls) == {0, 1}) == (target != "k"), (target, split_calls)
    assert expected.abs().max() > 1e-2


def test_labels_and_grid_layout(setups):
    model, task = setups["gpt2_ln_learned"]
    seq = task.clean.shape[1]
    heads = activation_patching(model, task, "head_out", by_pos=True, progress=False)
    assert heads.labels[0] == names.head(0, 0, pos=0)
    assert heads.labels[1] == names.head(0, 1, pos=0)  # grid order [layer, pos, head]
    assert heads[names.head(1, 2, pos=3)] == pytest.approx(float(heads.meta["grid"][1, 3, 2]))
    assert heads.meta["grid_dims"] == ("layer", "pos", "head")
    assert len(heads) == model.cfg.n_layers * seq * model.cfg.n_heads
    pattern = activation_patching(model, task, "pattern", by_pos=True, progress=False)
    assert pattern[names.head(1, 2, pos=3)] == pytest.approx(float(pattern.meta["grid"][1, 2, 3]))
    mlp = activation_patching(model, task, "mlp_out", by_pos=True, progress=False)
    assert mlp[names.mlp(1, pos=2)] == pytest.approx(float(mlp.meta["grid"][1, 2]))
    resid = activation_patching(model, task, "resid_pre", progress=False)
    assert resid.labels == [names.site("resid_pre", 0), names.site("resid_pre", 1)]
    # patching the whole residual stream entering layer 0 restores the clean run exactly
    assert resid[names.site("resid_pre", 0)] == pytest.approx(1.0, abs=1e-5)
    frame = heads.to_frame()
    assert set(frame["pos"]) == set(range(seq)) and frame["kind"].eq("head").all()


def test_head_and_layer_restriction_leaves_others_unpatched(setups):
    model, task = setups["gpt2_ln_learned"]
    full = activation_patching(model, task, "head_out", progress=False)
    some = activation_patching(model, task, "head_out", heads=["a1.h2", "a0.h1"], progress=False)
    assert sorted(some.labels) == ["a0.h1", "a1.h2"]
    assert some["a1.h2"] == pytest.approx(full["a1.h2"], abs=1e-6)
    assert torch.isnan(some.meta["grid"]).sum() == full.meta["grid"].numel() - 2
    layer1 = activation_patching(model, task, "mlp_out", by_pos=True, layers=[1], progress=False)
    assert {names.parse_node(x).layer for x in layer1.labels} == {1}


def test_head_sets_equal_patching_the_heads_together(setups):
    model, task = setups["rms_rotary_gqa"]
    sets = [["a0.h1", "a1.h3"], ["a1.h0"], ["a0.h0", "a0.h2"]]
    fast = patch_head_sets(model, task, sets, batch_size=3, progress=False)
    runs = prepare_runs(model, task, "denoise", [], [])
    with torch.no_grad():
        _, clean = model.run_with_cache(task.clean)
    for value, heads in zip(fast.tolist(), sets, strict=True):
        def patch(act, hook, heads=heads):
            layer = int(hook.name.split(".")[1])
            for h in heads:
                node = names.parse_node(h)
                if node.layer == layer:
                    act[:, :, node.head] = clean[hook.name][:, :, node.head]
            return act
        with torch.no_grad():
            logits = model.run_with_hooks(task.corrupted, fwd_hooks=[(f"blocks.{x}.attn.hook_z", patch) for x in (0, 1)])
        assert value == pytest.approx(runs.normalized(logits), abs=1e-5)
    # one head alone equals its head_out patching score
    single = activation_patching(model, task, "head_out", heads=["a1.h0"], progress=False)
    assert fast[1] == pytest.approx(single["a1.h0"], abs=1e-6)


def test_batch_size_does_not_change_results(setups):
    model, task = setups["attn_only"]
    a = activation_patching(model, task, "v", by_pos=True, batch_size=1, progress=False)
    b = activation_patching(model, task, "v", by_pos=True, batch_size=1000, progress=False)
    torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=0)


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("config,target,metric", [("gpt2_ln_learned", "head_out", "logit_diff"),
                                                  ("rms_rotary_gqa", "resid_pre", "logit_diff"),
                                                  ("gpt2_ln_learned", "head_out", "answer_logprob")])
def test_answer_position_logits_equal_full_logits(setups, config, target, metric):
    """Built-in metrics get logits at the answer position only (the logit difference: only the
    answer and wrong-answer columns); a callable metric gets full logits. Answer positions vary
    per prompt, so some by-position passes start after a prompt's answer."""
    from circuitkit.tasks import metrics

    model, _ = setups[config]
    task = random_task(model, n_prompts=3, seq=5, seed=2)
    task = Task("padded", task.clean, task.corrupted, task.answers, task.wrong_answers, answer_pos=[1, 4, 2],
                metric=metric)
    assert task.reads_answer_position_only
    assert (task.metric_token_ids() is not None) == (metric == "logit_diff")

    def full_metric(logits, task):
        assert logits.ndim == 3, "a callable metric must see every position"
        return metrics.METRICS[metric](logits, task)

    custom = Task("padded", task.clean, task.corrupted, task.answers, task.wrong_answers, answer_pos=[1, 4, 2],
                  metric=full_metric)
    assert not custom.reads_answer_position_only
    for by_pos in (False, True):
        fast = activation_patching(model, task, target, by_pos=by_pos, batch_size=6, progress=False)
        slow = activation_patching(model, custom, target, by_pos=by_pos, batch_size=6, progress=False)
        torch.testing.assert_close(fast.values, slow.values, atol=1e-5, rtol=0)
    expected = transformer_lens_grid(model, task, target, True)
    torch.testing.assert_close(fast.meta["grid"], expected.cpu(), atol=1e-4, rtol=0)


def test_unknown_target_lists_valid_ones(setups):
    model, task = setups["gpt2_ln_learned"]
    with pytest.raises(ValueError, match=r"unknown target 'z'.*head_out.*pattern"):
        activation_patching(model, task, "z")


def test_missing_hook_on_attention_only_model(setups):
    model, task = setups["attn_only"]
    with pytest.raises(ValueError, match=r"has no mlp_out hook.*choose one of"):
        activation_patching(model, task, "mlp_out")


def test_head_and_layer_out_of_range(setups):
    model, task = setups["gpt2_ln_learned"]
    with pytest.raises(ValueError, match=r"head 'a1.h9' is out of range.*2 layers x 4 heads"):
        activation_patching(model, task, "head_out", heads=["a1.h9"])
    with pytest.raises(ValueError, match=r"layer 5 is out of range"):
        activation_patching(model, task, "resid_pre", layers=[5])
    gqa, gqa_task = setups["rms_rotary_gqa"]
    with pytest.raises(ValueError, match=r"key/value head 'a0.h3' is out of range"):
        activation_patching(gqa, gqa_task, "k", heads=["a0.h3"])
    with pytest.raises(ValueError, match=r"out of range"):
        patch_head_sets(model, task, [["a0.h0", "a7.h0"]])


def test_task_from_another_vocabulary(setups):
    model, task = setups["gpt2_ln_learned"]
    foreign = Task("foreign", task.clean + model.cfg.d_vocab, task.corrupted, task.answers, task.wrong_answers)
    with pytest.raises(ValueError, match=r"outside model .* vocabulary.*tokenizer"):
        activation_patching(model, foreign, "head_out")


def test_nan_metric(setups):
    model, task = setups["gpt2_ln_learned"]

    def broken(logits, task):
        return torch.full((logits.shape[0],), float("nan"))

    with pytest.raises(ValueError, match=r"metric 'broken' returned NaN"):
        activation_patching(model, task.with_metric(broken), "head_out")


def test_bad_direction_and_misused_heads(setups):
    model, task = setups["gpt2_ln_learned"]
    with pytest.raises(ValueError, match=r"direction must be 'denoise'.*or 'noise'"):
        activation_patching(model, task, "head_out", direction="sideways")
    with pytest.raises(ValueError, match=r"heads= restricts head-level targets"):
        activation_patching(model, task, "resid_pre", heads=["a0.h0"])
    with pytest.raises(ValueError, match=r"not an attention head"):
        activation_patching(model, task, "head_out", heads=["m0"])


def test_corruption_without_effect(setups):
    model, task = setups["gpt2_ln_learned"]
    same = Task("same", task.clean, task.clean, task.answers, task.wrong_answers)
    with pytest.raises(ValueError, match=r"same logit_diff.*cannot be normalized"):
        activation_patching(model, same, "head_out")


def test_heatmap_layouts(setups):
    from circuitkit.viz.patching import patching_heatmap

    model, task = setups["gpt2_ln_learned"]
    seq = task.clean.shape[1]
    by_pos = patching_heatmap(activation_patching(model, task, "head_out", by_pos=True, progress=False))
    assert len(by_pos.data[0].y) == model.cfg.n_layers * model.cfg.n_heads and len(by_pos.data[0].x) == seq
    layer_pos = patching_heatmap(activation_patching(model, task, "resid_pre", by_pos=True, progress=False))
    assert len(layer_pos.data[0].z) == model.cfg.n_layers and len(layer_pos.data[0].z[0]) == seq
