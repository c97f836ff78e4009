import pytest
import torch

from circuitkit import ablate, ioi, run_ablated


def test_zero_ablating_every_head_removes_attention(tiny_attn_only):
    model = tiny_attn_only
    task = ioi(model, n_prompts=4)
    heads = [f"a{layer}.h{h}" for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    logits = run_ablated(model, task.clean, heads, "zero")
    # With every head's z zeroed only embeddings and output biases reach the unembed.
    _, cache = model.run_with_cache(task.clean)
    direct = model.unembed(cache["hook_embed"] + cache["hook_pos_embed"] + sum(
        model.blocks[layer].attn.b_O for layer in range(model.cfg.n_layers)))
    assert torch.allclose(logits, direct, atol=1e-4)


def test_mean_ablation_uses_reference_mean(tiny_model):
    task = ioi(tiny_model, n_prompts=6)
    seen = {}
    hook_name = "blocks.1.attn.hook_z"
    logits = run_ablated(tiny_model, task.clean, ["a1.h2"], "mean", reference=task.corrupted)
    tiny_model.run_with_hooks(task.clean, fwd_hooks=[(hook_name, lambda z, hook: seen.setdefault("z", z))])
    _, cache = tiny_model.run_with_cache(task.corrupted)
    expected_z = seen["z"].clone()
    expected_z[:, :, 2] = cache[hook_name][:, :, 2].mean(0, keepdim=True)
    expected = tiny_model.run_with_hooks(task.clean, fwd_hooks=[(hook_name, lambda z, hook: expected_z)])
    assert torch.allclose(logits, expected, atol=1e-5)


def test_resample_is_seeded_and_changes_output(tiny_model):
    task = ioi(tiny_model, n_prompts=6)
    a = run_ablated(tiny_model, task.clean, ["m0", "a0.h1"], "resample", seed=1)
    b = run_ablated(tiny_model, task.clean, ["m0", "a0.h1"], "resample", seed=1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, tiny_model(task.clean))


def test_ablate_reports_recovery(tiny_model):
    result = ablate(tiny_model, ioi(tiny_model, n_prompts=6), [], "mean")
    assert result.ablated == pytest.approx(result.clean)


@pytest.mark.parametrize("bad, match", [(["a2.h0"], "out of range"), (["a0.h9"], "out of range"),
                                        (["logits"], "only heads"), (["x1"], "unknown component")])
def test_bad_components(tiny_model, bad, match):
    with pytest.raises(ValueError, match=match):
        run_ablated(tiny_model, torch.zeros(1, 3, dtype=torch.long), bad, "zero")


def test_mlp_on_attention_only_model(tiny_attn_only):
    with pytest.raises(ValueError, match="attention-only"):
        run_ablated(tiny_attn_only, torch.zeros(1, 3, dtype=torch.long), ["m0"], "zero")
    with pytest.raises(ValueError, match="unknown ablation 'half'"):
        run_ablated(tiny_attn_only, torch.zeros(1, 3, dtype=torch.long), ["a0.h0"], "half")


def test_a_position_in_a_node_id_ablates_that_position_only():
    """``a1.h0@p`` replaces the head's output at position ``p`` alone (checked against a hand-written
    hook); every position listed equals the whole head; positions beyond the prompts are refused."""
    import circuitkit as ck

    model = ck.load_model("zoo:induction-handbuilt")
    task = ck.zoo_task("induction-handbuilt", model, n_prompts=8)
    n_pos = task.clean.shape[1]
    last = n_pos - 1
    _, cache = model.run_with_cache(task.clean)
    z = cache["z", 1]
    mean = z.mean(0, keepdim=True)

    def by_hand(value, hook):
        value = value.clone()
        value[:, last, 0] = mean[:, last, 0].expand(value.shape[0], -1)
        return value

    with torch.no_grad():
        expected = float(task.score(model.run_with_hooks(task.clean, fwd_hooks=[(ck.names.hook("z", 1), by_hand)])))
    at_last = ck.ablate(model, task, [f"a1.h0@{last}"], kind="mean")
    assert at_last.ablated == pytest.approx(expected, abs=1e-5)
    whole = ck.ablate(model, task, ["a1.h0"], kind="mean")
    assert whole.ablated != pytest.approx(ck.ablate(model, task, ["a1.h0@0"], kind="mean").ablated, abs=1e-3)
    every = ck.ablate(model, task, [f"a1.h0@{p}" for p in range(n_pos)], kind="mean")
    assert every.ablated == pytest.approx(whole.ablated, abs=1e-5)
    with pytest.raises(ValueError, match=rf"positions \[99\] lie beyond the prompts' {n_pos} tokens"):
        ck.ablate(model, task, ["a1.h0@99"])
