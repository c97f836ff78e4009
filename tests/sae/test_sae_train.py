from __future__ import annotations

import pytest
import torch

from circuitkit.sae import encode, load_pretrained_sae, load_sae, sae_quality, save_sae, train_sae

HOOK = "blocks.1.hook_resid_pre"


def test_trained_sae_beats_its_initialisation(tiny_model, trained_sae, sae_tokens):
    from sae_lens import StandardSAE

    assert isinstance(trained_sae, StandardSAE)
    assert trained_sae.cfg.d_in == tiny_model.cfg.d_model and trained_sae.cfg.d_sae == 64
    assert trained_sae.cfg.metadata.hook_name == HOOK
    fresh = StandardSAE(trained_sae.cfg)
    fresh.cfg.metadata.hook_name = HOOK
    trained_q = sae_quality(tiny_model, trained_sae, sae_tokens)
    fresh_q = sae_quality(tiny_model, fresh, sae_tokens)
    assert trained_q.mse < 0.5 * fresh_q.mse


@pytest.mark.parametrize("arch, cls_name", [("topk", "TopKSAE"), ("jumprelu", "JumpReLUSAE")])
def test_other_architectures_train(tiny_model, sae_tokens, arch, cls_name):
    sae = train_sae(tiny_model, "blocks.0.hook_mlp_out", sae_tokens, arch, d_sae=32, k=4, steps=40,
                    batch_size_tokens=128, context_size=16, progress=False)
    assert type(sae).__name__ == cls_name
    acts = encode(tiny_model, sae, sae_tokens[:4])
    assert acts.shape == (4, 16, 32)
    if arch == "topk":
        assert int((acts > 0).sum(-1).max()) <= 4


def test_train_from_text_file(tiny_model, tmp_path):
    text = " ".join(["John and Mary went to the store and John gave a book to Mary ."] * 40)
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    sae = train_sae(tiny_model, HOOK, path, d_sae=16, steps=5, batch_size_tokens=32, context_size=16, progress=False)
    assert sae.cfg.d_sae == 16


def test_save_load_round_trip_gives_identical_encodings(tiny_model, trained_sae, sae_tokens, tmp_path, monkeypatch):
    path = save_sae(trained_sae, tmp_path / "sae")
    assert sorted(p.name for p in path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]

    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load (unpickling) must not be used to read an SAE")

    monkeypatch.setattr(torch, "load", no_pickles)
    loaded = load_sae(path)
    assert loaded.cfg.metadata.hook_name == HOOK
    assert torch.equal(encode(tiny_model, loaded, sae_tokens), encode(tiny_model, trained_sae, sae_tokens))
    save_sae(loaded, path)  # overwriting in place works
    assert torch.equal(load_sae(path).W_dec, trained_sae.W_dec)


def test_corrupted_checkpoint_gives_clear_error(trained_sae, tmp_path):
    path = save_sae(trained_sae, tmp_path / "sae")
    weights = path / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt.*re-save"):
        load_sae(path)
    weights.write_bytes(b"\x80\x04not safetensors at all")
    with pytest.raises(ValueError, match="cannot read SAE weights"):
        load_sae(path)
    (path / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_sae(path)
    with pytest.raises(FileNotFoundError, match="no SAE directory"):
        load_sae(tmp_path / "missing")


def test_config_and_weights_from_different_saes(trained_sae, tmp_path):
    import json

    path = save_sae(trained_sae, tmp_path / "sae")
    cfg = json.loads((path / "cfg.json").read_text())
    cfg["d_sae"] = 128
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="different SAEs"):
        load_sae(path)


def test_bad_hook_lists_close_matches(tiny_model, sae_tokens):
    with pytest.raises(ValueError, match=r"no hook point 'blocks.1.hook_resid_pree'.*blocks.1.hook_resid_pre"):
        train_sae(tiny_model, "blocks.1.hook_resid_pree", sae_tokens, steps=1, progress=False)
    with pytest.raises(ValueError, match="unknown SAE architecture 'relu'"):
        train_sae(tiny_model, HOOK, sae_tokens, "relu", steps=1)


def test_pretrained_offline_error_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="(?s)not in the local Hugging Face cache.*SAE.from_pretrained"):
        load_pretrained_sae("gpt2-small-res-jb", "blocks.0.hook_resid_pre")
    with pytest.raises(ValueError, match="unknown SAELens release"):
        load_pretrained_sae("gpt2-small-res-jbb", "blocks.0.hook_resid_pre")
    with pytest.raises(ValueError, match="never unpickles"):
        load_pretrained_sae("gpt2-small-hook-z-kk", "blocks.0.hook_z")


def test_a_config_sets_the_hyperparameters_and_keywords_override_them(tiny_model, sae_tokens):
    from circuitkit.sae import SAETrainConfig

    config = SAETrainConfig(k=3, steps=5, batch_size_tokens=32, context_size=16)
    sae = train_sae(tiny_model, HOOK, sae_tokens, "topk", d_sae=16, config=config, progress=False)
    assert sae.cfg.k == 3 and sae.cfg.d_sae == 16
    again = train_sae(tiny_model, HOOK, sae_tokens, "topk", d_sae=16, config=config, k=5, progress=False)
    assert again.cfg.k == 5
    with pytest.raises(TypeError, match=r"unknown hyperparameters \['stepz'\]; SAETrainConfig has"):
        train_sae(tiny_model, HOOK, sae_tokens, stepz=3)
