"""load_model over local Hugging Face directories (tiny random models), names, and zoo specs."""

import pytest
import torch

from circuitkit import ModelLoadError, load_model


def _save_hf(tmp_path, arch, tokenizer):
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    v = len(tokenizer)
    configs = {
        "gpt2": (GPT2LMHeadModel, GPT2Config(vocab_size=v, n_positions=64, n_embd=32, n_layer=2, n_head=4)),
        "neox": (GPTNeoXForCausalLM, GPTNeoXConfig(vocab_size=v, max_position_embeddings=64, hidden_size=32,
                                                   num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
        "llama": (LlamaForCausalLM, LlamaConfig(vocab_size=v, max_position_embeddings=64, hidden_size=32,
                                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                intermediate_size=64)),
    }
    cls, cfg = configs[arch]
    torch.manual_seed(0)
    hf = cls(cfg).eval()
    path = tmp_path / f"tiny-{arch}"
    hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return hf, path


@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama"])
def test_local_hf_directory_matches_hf(tmp_path, word_tokenizer, arch):
    hf, path = _save_hf(tmp_path, arch, word_tokenizer)
    model = load_model(path, device="cpu")
    tokens = model.to_tokens("When Mary and John went to the store", prepend_bos=True)
    assert tokens[0, 0].item() == word_tokenizer.bos_token_id and tokens.shape[1] == 9
    with torch.no_grad():
        ours, theirs = model(tokens).log_softmax(-1), hf(tokens).logits.log_softmax(-1)
    assert torch.allclose(ours, theirs, atol=1e-4)
    if arch == "llama":
        assert model.cfg.n_key_value_heads == 2  # grouped-query attention kept


def test_pretrained_name_offline_has_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError, match=r"(?s)cannot load .gpt2-small.*not in the local Hugging Face cache.*zoo list"):
        load_model("gpt2-small")


def test_unknown_specs():
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")
    with pytest.raises(ModelLoadError, match="no model directory at './missing/dir'"):
        load_model("./missing/dir")
    with pytest.raises(KeyError, match="no zoo model named 'nope'"):
        load_model("zoo:nope")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(tmp_path)


@pytest.mark.parametrize("device, match", [
    ("meta", "device 'meta' is not supported: meta tensors hold no weights"),
    ("tpu", "unknown device 'tpu'"),
    ("xpu", "device 'xpu' is not supported"),
])
def test_unusable_devices_are_named_not_blamed_on_the_file(device, match):
    with pytest.raises(ModelLoadError, match=match) as info:
        load_model("zoo:induction-handbuilt", device=device)
    assert "corrupt" not in str(info.value) and "zoo train" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_named():
    with pytest.raises(ModelLoadError, match="CUDA is not available on this machine"):
        load_model("zoo:induction-handbuilt", device="cuda")
