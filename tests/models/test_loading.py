"""load_model over local Hugging Face directories (tiny random models), names, and zoo specs."""

import pytest
import torch
from model_factory import save_hf_folder

from circuitkit import ModelLoadError, load_model


@pytest.mark.parametrize("arch", ["gpt2", "neox", "gptj", "llama", "mistral", "qwen3", "gemma2", "gemma3"])
def test_local_hf_directory_matches_hf(tmp_path, word_tokenizer, arch):
    """Each family's tiny random Hugging Face folder loads to the same next-token distribution
    (Gemma, which TransformerLens knows only by published size, through circuitkit's config)."""
    hf, path = save_hf_folder(tmp_path, arch, word_tokenizer)
    model = load_model(path, device="cpu")
    tokens = model.to_tokens("When Mary and John went to the store then Mary gave", prepend_bos=True)
    assert tokens[0, 0].item() == word_tokenizer.bos_token_id and tokens.shape[1] == 12
    with torch.no_grad():
        ours, theirs = model(tokens).log_softmax(-1), hf(tokens).logits.log_softmax(-1)
    assert torch.allclose(ours, theirs, atol=1e-4)
    if arch in ("llama", "mistral", "qwen3", "gemma2", "gemma3"):
        assert model.cfg.n_key_value_heads == 2  # grouped-query attention kept
    assert model.cfg.use_qk_norm == (arch in ("qwen3", "gemma3"))
    assert model.cfg.use_normalization_before_and_after == (arch in ("gemma2", "gemma3"))
    assert model.cfg.parallel_attn_mlp == (arch in ("neox", "gptj"))


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


def test_a_hub_name_fails_fast_when_the_hub_is_unreachable(monkeypatch, tmp_path):
    """Not cached and the hub's host refuses connections (HF_HUB_OFFLINE unset): refused at once
    with the fix, not after the hub client's retries."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "https://127.0.0.1:9")  # nothing listens there
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"(?s)cannot load .gpt2-small.*the Hugging Face hub cannot be reached"):
        load_model("gpt2-small")
    assert time.perf_counter() - start < 5
