"""RelP (relevance patching) against a hand-written LRP recomputation, against exact patching on the
zoo's trained models (side by side with attribution patching), and as a discovery method."""

import pytest
import torch
import torch.nn.functional as F

import circuitkit as ck
from circuitkit.attribution.relevance import relp, relp_rules

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lrp_forward(model, tokens, deltas=None):
    """``tiny_model``'s forward pass written out by hand with RelP's rules (LayerNorm scales and the
    GELU's slope as constants of the backward pass); ``deltas`` (zeros) are added to each head's
    result ``a{L}.h{H}`` and MLP output ``m{L}`` so that their gradients are the relevance slopes.
    Returns (logits, {component: its output})."""
    cfg = model.cfg

    def ln(x, w, b):
        x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1, keepdim=True) + cfg.eps).sqrt().detach()  # LN-rule
        return x / scale * w + b

    outs = {}
    pos = torch.arange(tokens.shape[1])
    x = model.W_E[tokens] + model.W_pos[pos]
    mask = torch.triu(torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool), 1)
    for layer, block in enumerate(model.blocks):
        a = ln(x, block.ln1.w, block.ln1.b)
        q = torch.einsum("bpd,hde->bphe", a, block.attn.W_Q) + block.attn.b_Q
        k = torch.einsum("bpd,hde->bphe", a, block.attn.W_K) + block.attn.b_K
        v = torch.einsum("bpd,hde->bphe", a, block.attn.W_V) + block.attn.b_V
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / cfg.d_head ** 0.5
        pattern = scores.masked_fill(mask, float("-inf")).softmax(-1)
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        attn_out = block.attn.b_O
        for h in range(cfg.n_heads):
            name = f"a{layer}.h{h}"
            outs[name] = z[:, :, h] @ block.attn.W_O[h] + (deltas[name] if deltas else 0)
            attn_out = attn_out + outs[name]
        x = x + attn_out
        pre = ln(x, block.ln2.w, block.ln2.b) @ block.mlp.W_in + block.mlp.b_in
        slope = (F.gelu(pre) / (pre + 1e-6 * torch.where(pre >= 0, 1.0, -1.0))).detach()  # Identity-rule
        post = F.gelu(pre).detach() + (pre - pre.detach()) * slope
        name = f"m{layer}"
        outs[name] = post @ block.mlp.W_out + block.mlp.b_out + (deltas[name] if deltas else 0)
        x = x + outs[name]
    final = ln(x, model.ln_final.w, model.ln_final.b)
    return final @ model.W_U + model.b_U, outs


def test_relp_equals_a_hand_written_lrp_recomputation(tiny_model):
    model = tiny_model
    task = ck.ioi(model, n_prompts=6, seed=1)
    with torch.no_grad():
        logits, _ = lrp_forward(model, task.clean)
        torch.testing.assert_close(logits, model(task.clean), atol=1e-4, rtol=1e-4)  # the same model
        _, corrupted = lrp_forward(model, task.corrupted)
        _, clean = lrp_forward(model, task.clean)
    deltas = {n: torch.zeros_like(v, requires_grad=True) for n, v in clean.items()}
    logits, _ = lrp_forward(model, task.clean, deltas)
    grads = dict(zip(deltas, torch.autograd.grad(task.score(logits), list(deltas.values())), strict=True))
    expected = {n: float(((corrupted[n] - clean[n]) * grads[n]).sum()) for n in deltas}
    got = {**relp(model, task, "head_out").as_dict(), **relp(model, task, "mlp_out").as_dict()}
    assert set(got) == set(expected)
    scale = max(abs(v) for v in expected.values())
    assert scale > 1e-4
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-4 * scale), name
    plain = ck.attribution_patching(model, task, "mlp_out", progress=False).as_dict()
    assert any(abs(plain[n] - got[n]) > 1e-3 * scale for n in plain)  # the rules change the answer


def test_the_rules_change_no_forward_value_and_leave_no_hook_behind(tiny_model):
    task = ck.ioi(tiny_model, n_prompts=4)
    hooks_before = {name: len(point.fwd_hooks) for name, point in tiny_model.hook_dict.items()}
    with torch.no_grad():
        plain = tiny_model(task.clean)
        with relp_rules(tiny_model, ("ln", "identity", "half", "attention")):
            ruled = tiny_model(task.clean)
    assert torch.equal(plain, ruled)
    assert {name: len(point.fwd_hooks) for name, point in tiny_model.hook_dict.items()} == hooks_before
    with pytest.raises(ValueError, match=r"unknown RelP rules \['sign'\]"):
        with relp_rules(tiny_model, ("sign",)):
            pass


def exact_effects(model, task, target):
    """m(clean with one component's output from the corrupted run) - m(clean), by hand."""
    _, cache = model.run_with_cache(task.corrupted)
    with torch.no_grad():
        clean = float(task.score(model(task.clean)))
    out = {}
    for layer in range(model.cfg.n_layers):
        if target == "mlp_out":
            hook = ck.names.hook("mlp_out", layer)
            with torch.no_grad():
                patched = model.run_with_hooks(task.clean, fwd_hooks=[(hook, lambda x, hook, h=hook: cache[h])])
            out[ck.names.mlp(layer)] = float(task.score(patched)) - clean
            continue
        hook = ck.names.hook("z", layer)
        for head in range(model.cfg.n_heads):
            def one(z, hook, h=head, name=hook):
                z = z.clone()
                z[:, :, h] = cache[name][:, :, h]
                return z
            with torch.no_grad():
                out[ck.names.head(layer, head)] = float(task.score(model.run_with_hooks(task.clean, fwd_hooks=[(hook, one)]))) - clean
    return out


@pytest.mark.parametrize("zoo, target", [("ioi-trained", "head_out"), ("ioi-trained", "mlp_out"),
                                         ("induction-trained", "head_out"), ("tiny-lm", "head_out"),
                                         ("needle-trained", "head_out")])
def test_relp_tracks_exact_patching_at_least_as_well_as_attribution_patching(zoo, target):
    """Pearson correlation with exact activation patching (each component alone, by hand)."""
    model = ck.load_model(f"zoo:{zoo}")
    task = ck.zoo_task(zoo, model)
    task = task.subset(range(min(len(task), 16)))
    exact = exact_effects(model, task, target)
    labels = list(exact)
    truth = torch.tensor([exact[n] for n in labels])

    def pearson(scores):
        values = torch.tensor([scores.as_dict()[n] for n in labels])
        return float(torch.corrcoef(torch.stack([values, truth]))[0, 1])

    r_relp = pearson(relp(model, task, target))
    r_atp = pearson(ck.attribution_patching(model, task, target, progress=False))
    assert r_relp >= r_atp - 1e-6 and r_relp > 0.4, (r_relp, r_atp)


def test_relp_discovers_the_true_circuit_and_refuses_a_bridge(tmp_path, word_tokenizer):
    model = ck.load_model("zoo:induction-handbuilt")
    task = ck.zoo_task("induction-handbuilt", model)
    circuit = ck.discover(model, task, "relp")
    hidden = ck.zoo_card("induction-handbuilt").evidence.get("mean_ablation_invisible_edges", {})
    assert circuit.meta["faithfulness"] >= 0.9
    assert ck.roc_auc(circuit.scores("edge"), ck.reference_circuit("induction-handbuilt"), level="edge",
                      ignore=hidden) >= 0.95
    from model_factory import save_hf_folder

    _, path = save_hf_folder(tmp_path, "gpt2", word_tokenizer)
    bridge = ck.load_model(path, backend="bridge")
    with pytest.raises(ValueError, match="relp applies its rules through HookedTransformer's hook points"):
        relp(bridge, ck.induction(bridge, n_prompts=2))
