"""DuoAttention's learned gates: the gated attention is the model at alpha = 1 and the all-streaming
`KVPolicy` at alpha = 0 (to 1e-5, grouped-query attention too), each head's output is the gate's mix
of its full and streaming outputs, training leaves the model untouched, the gates recover the zoo
needle models' recorded retrieval heads (ROC-AUC >= 0.95 against both cards) in a few seconds, and
kvpress's own loader reads them through `export_kvpress_duo`."""

import json

import numpy as np
import pytest
import torch
from model_factory import word_model
from test_kvpress_export import _load_with_kvpress

import circuitkit as ck
from circuitkit.cli import main
from circuitkit.errors import InputError
from circuitkit.heads import (
    NeedlePrompt,
    duo_gate_hooks,
    duo_gates,
    head_scores,
    run_with_duo_gates,
)
from circuitkit.heads.kv import KVPolicy, run_with_kv_policy
from circuitkit.heads.kvpress import export_kvpress_duo, read_kvpress_duo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {"steps": 40, "lr": 0.05, "sparsity": 0.5, "window": 8, "progress": False}


@pytest.fixture(scope="module", params=["ln", "gqa"])
def tiny(request):
    return word_model("mha", seed=1) if request.param == "ln" else word_model("gqa", seed=2, n_layers=3)


def _n_kv(model):
    return model.cfg.n_key_value_heads or model.cfg.n_heads


def _tokens(model, n=3, n_pos=40):
    return torch.randint(4, model.cfg.d_vocab, (n, n_pos), generator=torch.Generator().manual_seed(0))


def test_gate_one_is_the_model_and_gate_zero_the_streaming_policy(tiny):
    tokens = _tokens(tiny)
    shape = (tiny.cfg.n_layers, _n_kv(tiny))
    full = tiny(tokens)
    torch.testing.assert_close(run_with_duo_gates(tiny, tokens, torch.ones(shape), 4, 8), full, atol=1e-5, rtol=0)
    streaming = run_with_kv_policy(tiny, tokens, KVPolicy(frozenset(), 4, 8))
    torch.testing.assert_close(run_with_duo_gates(tiny, tokens, torch.zeros(shape), 4, 8), streaming, atol=1e-5, rtol=0)
    assert (streaming - full).abs().max() > 1e-2  # the prompts are longer than the cache: streaming matters
    # a window covering the whole prompt streams nothing
    torch.testing.assert_close(run_with_duo_gates(tiny, tokens, torch.zeros(shape), 0, 40), full, atol=1e-5, rtol=0)


def test_each_heads_output_is_its_gates_mix_of_full_and_streaming(tiny):
    """Layer 0 reads the same input either way, so its ``z`` under the gates is exactly
    ``alpha * z_full + (1 - alpha) * z_streaming`` per head (a group's query heads share alpha)."""
    tokens = _tokens(tiny)
    gates = torch.rand(tiny.cfg.n_layers, _n_kv(tiny), generator=torch.Generator().manual_seed(3))
    z_name = "blocks.0.attn.hook_z"
    _, full = tiny.run_with_cache(tokens, names_filter=z_name)
    stream_hooks = KVPolicy(frozenset(), 4, 8).hooks(tiny)
    with tiny.hooks(fwd_hooks=stream_hooks):
        _, stream = tiny.run_with_cache(tokens, names_filter=z_name)
    with tiny.hooks(fwd_hooks=duo_gate_hooks(tiny, gates, 4, 8)):
        _, mixed = tiny.run_with_cache(tokens, names_filter=z_name)
    alpha = gates[0].repeat_interleave(tiny.cfg.n_heads // _n_kv(tiny))[None, None, :, None]
    torch.testing.assert_close(mixed[z_name], alpha * full[z_name] + (1 - alpha) * stream[z_name], atol=1e-5, rtol=0)


def test_training_moves_only_the_gates(tiny):
    gen = torch.Generator().manual_seed(1)
    prompts = [NeedlePrompt(t, 5, 7, t[5:7]) for t in torch.randint(4, tiny.cfg.d_vocab, (4, 40), generator=gen)]
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    flags = [p.requires_grad for p in tiny.parameters()]
    scores = duo_gates(tiny, prompts, steps=5, batch_size=2, progress=False)
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert [p.requires_grad for p in tiny.parameters()] == flags
    gates = scores.meta["gates"]
    assert gates.shape == (tiny.cfg.n_layers, _n_kv(tiny)) and ((gates >= 0) & (gates <= 1)).all()
    group = tiny.cfg.n_heads // _n_kv(tiny)
    assert torch.equal(scores.head_grid(), gates.repeat_interleave(group, dim=1))
    assert len(scores.meta["distill_loss"]) == 5 and scores.meta["steps"] == 5 and scores.method == "duo"


def test_inputs_are_checked_up_front(tiny):
    prompts = [NeedlePrompt(torch.arange(4, 24), 5, 7, torch.tensor([9, 10]))]
    with pytest.raises(InputError, match="fit in the streaming cache"):
        duo_gates(tiny, prompts, sink=4, window=16, progress=False)
    for bad in ({"lr": 0.0}, {"sparsity": -1.0}, {"steps": 0}, {"init": 1.5}, {"window": 0}):
        with pytest.raises(InputError):
            duo_gates(tiny, prompts, **{"window": 4, **bad}, progress=False)
    with pytest.raises(InputError, match="one per key / value head"):
        run_with_duo_gates(tiny, _tokens(tiny), torch.ones(1, 1))


@pytest.mark.parametrize("name", ["retrieval-handbuilt", "needle-trained"])
def test_gates_find_the_zoo_models_retrieval_heads(name):
    model = ck.load_model(f"zoo:{name}")
    card = ck.zoo_card(name)
    task = ck.zoo_task(card, model, context_lengths=[64], depths=[0.0, 0.5])
    truth = list(card.evidence["retrieval_heads"])
    gates = duo_gates(model, task, **FAST)
    assert ck.roc_auc(gates, truth, by_abs=False) >= 0.95, gates.top(8, by_abs=False)
    assert gates.meta["distill_loss"][-1] < gates.meta["distill_loss"][0] or gates.meta["distill_loss"][0] == 0
    if name == "retrieval-handbuilt":  # one retrieval head: it alone stays open
        assert gates.top(1, by_abs=False)[0][0] == "a1.h0"
        assert max(v for k, v in gates.as_dict().items() if k != "a1.h0") < 0.05
    same = head_scores(model, task, "duo", sink=4, **{k: v for k, v in FAST.items() if k != "progress"})
    assert torch.equal(same.values, gates.values)


def test_kvpress_loads_the_gates_and_streams_the_lowest(monkeypatch, tmp_path):
    model = ck.load_model("zoo:needle-trained")
    task = ck.zoo_task("needle-trained", model, context_lengths=[64], depths=[0.0, 0.5])
    gates = duo_gates(model, task, **FAST)
    folder = export_kvpress_duo(gates, tmp_path / "duo", model, sink_size=4, recent_size=8)
    sink, recent, loaded, streaming = _load_with_kvpress(monkeypatch, folder, "gates", 0.5)
    assert (sink, recent) == (4, 8) and loaded.shape == (2, 4)
    assert json.loads((folder / "config.json").read_text())["scores_method"] == "duo"
    order = torch.argsort(gates.meta["gates"].flatten())[:4]  # kvpress streams the 4 lowest gates
    expected = torch.zeros(8, dtype=torch.bool)
    expected[order] = True
    assert torch.equal(streaming.cpu().flatten(), expected)
    g = gates.meta["gates"].double().numpy()
    assert np.allclose(read_kvpress_duo(folder)[0], (g - g.min()) / (g.max() - g.min()))  # order kept


def test_cli_duo_gates_prints_writes_and_exports(tmp_path, capsys):
    out, folder = tmp_path / "gates.csv", tmp_path / "duo"
    assert main(["heads", "duo-gates", "zoo:retrieval-handbuilt", "--lengths", "64", "--depths", "0", "0.5",
                 "--steps", "40", "--lr", "0.05", "--window", "8", "--top", "1", "--out", str(out),
                 "--kvpress", str(folder), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "a1.h0" in printed and out.is_file() and (folder / "full_attention_heads.tsv").is_file()
    assert main(["heads", "duo-gates", "zoo:retrieval-handbuilt", "--kvpress", str(tmp_path / "no" / "duo")]) == 2
    assert "parent folder does not exist" in capsys.readouterr().err
