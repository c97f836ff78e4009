"""Zoo models written as Hugging Face folders (circuitkit.models.hf_export): every model with a LayerNorm
runs the zoo model's function under plain transformers and under the bridge; the others are refused, by
name, before anything is written; the bridge of an exported induction model scores the reference
circuit as the HookedTransformer does."""

from __future__ import annotations

import json

import pytest
import torch
from model_factory import make_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import circuitkit as ck
from circuitkit.circuit import roc_auc
from circuitkit.models.hf_export import (
    GPT2,
    NEOX,
    PROVENANCE_FILE,
    ExportRefused,
    export_model_hf,
    export_zoo_hf,
)
from circuitkit.models.zoo_store import list_zoo, load_zoo_model, zoo_card, zoo_task, zoo_tokenizer
from circuitkit.zoo import reference_circuit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CARDS = {card.name: card for card in list_zoo()}
NO_LAYERNORM = sorted(name for name, card in CARDS.items() if card.config.get("normalization_type") is None)
EXPORTABLE = sorted(set(CARDS) - set(NO_LAYERNORM))
TOLERANCE = 1e-4  # absolute, on logits of scale ~10-20


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(name)``: the folder zoo model ``name`` was exported to (once per module)."""
    folders: dict = {}

    def get(name: str):
        if name not in folders:
            folders[name] = export_zoo_hf(name, tmp_path_factory.mktemp("export") / name)
        return folders[name]
    return get


def few_prompts(name: str, model):
    task = zoo_task(name, model)
    return torch.cat([task.clean[:2], task.corrupted[:1]])


def test_the_zoo_has_both_kinds():
    assert {"induction-trained", "ioi-trained", "needle-trained", "tiny-lm"} <= set(EXPORTABLE)
    assert {"induction-handbuilt", "retrieval-handbuilt", "tracr-hist"} <= set(NO_LAYERNORM)


@pytest.mark.parametrize("name", NO_LAYERNORM)
def test_models_without_layernorm_are_refused_before_writing(name, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ExportRefused, match="no LayerNorm") as info:
        export_zoo_hf(name, out)
    assert "normalises the residual stream" in info.value.reasons[0]
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written, no temp folder left


@pytest.mark.parametrize("name", EXPORTABLE)
def test_exported_folder_runs_the_zoo_function(name, exported):
    folder = exported(name)
    zoo = load_zoo_model(name)
    tokens = few_prompts(name, zoo)
    with torch.no_grad():
        expected = zoo(tokens)
        hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", local_files_only=True)
        torch.testing.assert_close(hf(tokens).logits, expected, atol=TOLERANCE, rtol=0)
        bridge = ck.load_model(folder, device="cpu", backend="bridge")
        torch.testing.assert_close(bridge(tokens), expected, atol=TOLERANCE, rtol=0)

    rotary = CARDS[name].config["positional_embedding_type"] == "rotary"
    assert type(hf).__name__ == (NEOX if rotary else GPT2)
    config = json.loads((folder / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["vocab_size"] == zoo.cfg.d_vocab
    # the tokenizer is the zoo's: same ids, same BOS
    tokenizer, ours = AutoTokenizer.from_pretrained(folder, local_files_only=True), zoo_tokenizer(zoo_card(name))
    text = "When Mary and John went to the store, John gave a drink to"
    assert tokenizer.encode(text) == ours.encode(text) and tokenizer.bos_token_id == ours.bos_token_id
    provenance = json.loads((folder / PROVENANCE_FILE).read_text())
    assert provenance["zoo_name"] == name and provenance["circuit"] == CARDS[name].circuit
    assert provenance["task"] == CARDS[name].task and provenance["circuitkit_version"] == ck.__version__
    if CARDS[name].config["attn_only"]:
        assert any("MLPs whose weights and biases are all zero" in note for note in provenance["notes"])
        assert all(not p.any() for n, p in hf.named_parameters() if ".mlp." in n)


def test_bridge_recovers_the_same_induction_circuit(exported):
    """EAP-IG on the bridge of the exported induction-trained finds the circuit the HookedTransformer
    finds, with the same edge ROC-AUC against the card's reference circuit. The exported GPT-2 has MLP
    nodes the attention-only zoo model lacks; they output zero, so every edge into or out of them
    scores exactly 0 (asserted). They are dropped before scoring: left in, they would add zero-score
    negatives (tied with the weakest true negatives) and change the AUC without saying anything about
    the circuit. Circuits are cut at a fixed size (``top_k``): the default search cuts at fractions of the
    graph's edge count, which the MLP edges change."""
    name = "induction-trained"
    hooked = load_zoo_model(name)
    bridge = ck.load_model(exported(name), device="cpu", backend="bridge")
    task = zoo_task(name, hooked, n_prompts=16)
    reference = reference_circuit(zoo_card(name))
    found = {label: ck.discover(model, task, method="eap-ig", top_k=20) for label, model in
             (("hooked", hooked), ("bridge", bridge))}
    bridge_scores = found["bridge"].scores("edge")
    mlp = [e for e in bridge_scores.labels if any(n.split("<")[0] in ("m0", "m1") for n in e.split("->"))]
    assert mlp and all(bridge_scores.as_dict()[e] == 0 for e in mlp)
    kept = bridge_scores.subset([e for e in bridge_scores.labels if e not in mlp])
    hooked_scores = found["hooked"].scores("edge")
    assert sorted(kept.labels) == sorted(hooked_scores.labels)
    auc = roc_auc(hooked_scores, reference, level="edge")
    assert auc > 0.9
    assert roc_auc(kept, reference, level="edge") == pytest.approx(auc, abs=1e-6)
    assert set(found["bridge"].edges) == set(found["hooked"].edges) and found["hooked"].edges
    assert found["bridge"].meta["faithfulness"] == pytest.approx(found["hooked"].meta["faithfulness"], abs=1e-4)


# --- the rewrites, on tiny random models (every weight and bias perturbed so none is trivially zero) ---

SYNTHETIC = {
    "gpt2-mlp-unscaled": dict(act_fn="gelu_new", use_attn_scale=False),
    "gpt2-lnpre-scaled": dict(normalization_type="LNPre", attn_scale=3.0),
    "gpt2-zero-final-ln-weight": dict(attn_only=True),
    "neox-adjacent-parallel": dict(positional_embedding_type="rotary", rotary_dim=4, rotary_adjacent_pairs=True,
                                   parallel_attn_mlp=True, act_fn="relu"),
    "neox-full-rotary": dict(positional_embedding_type="rotary", rotary_dim=8, attn_only=True, rotary_base=500),
}


@pytest.mark.parametrize("case", SYNTHETIC)
def test_rewrites_keep_the_function(case, tmp_path, word_tokenizer):
    overrides = dict(SYNTHETIC[case])
    attn_only = overrides.pop("attn_only", False)
    model = make_model(word_tokenizer, attn_only=attn_only, n_ctx=32, **overrides)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=gen))
        if case == "gpt2-zero-final-ln-weight":  # the b_U fold's other branch: a dimension the norm zeroes
            model.ln_final.w[3] = 0.0
    assert float(model.unembed.b_U.detach().abs().max()) > 0
    folder = export_model_hf(model, tmp_path / "out", tokenizer=word_tokenizer)
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", local_files_only=True)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 32), generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), atol=TOLERANCE, rtol=0)


def test_unsupported_configs_are_refused(word_tokenizer, tmp_path):
    model = make_model(word_tokenizer, n_ctx=32, normalization_type="RMS")
    with pytest.raises(ExportRefused, match="normalization is 'RMS'"):
        export_model_hf(model, tmp_path / "rms")
    model = make_model(word_tokenizer, n_ctx=32, d_vocab_out=7)
    with pytest.raises(ExportRefused, match="d_vocab_out 7"):
        export_model_hf(model, tmp_path / "vocab")
    model = make_model(word_tokenizer, n_ctx=32, parallel_attn_mlp=True)
    with pytest.raises(ExportRefused, match="in parallel with learned positions"):
        export_model_hf(model, tmp_path / "parallel")
    assert not list(tmp_path.iterdir())


def test_existing_folder_needs_force_and_is_replaced_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    export_zoo_hf("induction-trained", out)
    (out / "stale.txt").write_text("from before")
    with pytest.raises(ValueError, match="not empty"):
        export_zoo_hf("induction-trained", out)
    assert (out / "stale.txt").exists()
    export_zoo_hf("induction-trained", out, force=True)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or backup folder left beside it
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        export_zoo_hf("induction-trained", tmp_path / "file", force=True)
