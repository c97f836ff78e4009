"""`export_kvpress_duo` writes DuoAttention's attention-pattern folder; kvpress's own
``DuoAttentionPress.load_attention_pattern`` reads it (its HTTP fetch served from the folder) and
``post_init_from_model`` streams exactly the policy's key / value heads. kvpress is optional: its
package ``__init__`` imports every press (and their dependencies), so the test loads only the
DuoAttention module, and skips when kvpress (or its ``cachetools``) is not installed."""

import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from model_factory import make_model

import circuitkit as ck
from circuitkit.errors import InputError, InputTypeError
from circuitkit.heads.kv import HeadBudgetPolicy, KVPolicy
from circuitkit.heads.kvpress import export_kvpress_duo, read_kvpress_duo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _duo_module(monkeypatch):
    pytest.importorskip("cachetools")
    spec = importlib.util.find_spec("kvpress")
    if spec is None:
        pytest.skip("kvpress is not installed (pip install kvpress --no-deps, plus cachetools)")
    try:
        return importlib.import_module("kvpress.presses.duo_attention_press")
    except ImportError:  # the package __init__ needs every press's dependencies: load the one module
        for name, where in (("kvpress", spec.submodule_search_locations),
                            ("kvpress.presses", [str(Path(spec.submodule_search_locations[0]) / "presses")])):
            stub = types.ModuleType(name)
            stub.__path__ = list(where)
            monkeypatch.setitem(sys.modules, name, stub)
        for name in ("kvpress.utils", "kvpress.presses.base_press", "kvpress.presses.duo_attention_press"):
            monkeypatch.delitem(sys.modules, name, raising=False)
        return importlib.import_module("kvpress.presses.duo_attention_press")


def _load_with_kvpress(monkeypatch, folder: Path, tag: str, ratio: float):
    duo = _duo_module(monkeypatch)
    name = f"circuitkit-test/{tag}"
    monkeypatch.setitem(duo.PATTERNS_DICT, name, folder.name)

    def get(url, *args, **kwargs):  # kvpress fetches <base>/<PATTERNS_DICT[name]>/<file>
        file = folder / url.rsplit("/", 1)[-1]
        return SimpleNamespace(text=file.read_text(), json=lambda: json.loads(file.read_text()))

    monkeypatch.setattr(duo.requests, "get", get)
    fake = SimpleNamespace(config=SimpleNamespace(name_or_path=name), device="cpu")
    sink, recent, gates = duo.DuoAttentionPress.load_attention_pattern(fake)
    press = duo.DuoAttentionPress(head_compression_ratio=ratio)
    press.post_init_from_model(fake)
    return sink, recent, gates, press.streaming_mask


@pytest.fixture(scope="module")
def gqa():
    from circuitkit.tasks.builders import default_words
    from circuitkit.tokenizers import word_level_tokenizer

    return make_model(word_level_tokenizer(default_words()), n_layers=3, n_heads=4, n_key_value_heads=2,
                      normalization_type="RMS", positional_embedding_type="rotary")


def test_kvpress_loads_a_razor_policy_and_streams_its_heads(monkeypatch, tmp_path, gqa):
    policy = KVPolicy.razor(gqa, ["a0.h2", "a0.h3", "a2.h0", "a2.h1"], sink=4, window=32)
    folder = export_kvpress_duo(policy, tmp_path / "razor", gqa)
    config = json.loads((folder / "config.json").read_text())
    assert config["head_compression_ratio"] == pytest.approx(4 / 6)
    sink, recent, gates, streaming = _load_with_kvpress(monkeypatch, folder, "razor", config["head_compression_ratio"])
    assert (sink, recent) == (4, 32) and gates.shape == (3, 2)  # layers x key / value heads
    expected = torch.tensor([[True, False], [True, True], [False, True]])
    assert torch.equal(streaming.cpu(), expected)
    assert np.array_equal(read_kvpress_duo(folder)[0], gates)


def test_kvpress_streams_the_lowest_scoring_groups_first(monkeypatch, tmp_path, gqa):
    grid = torch.tensor([[0.9, 0.7, -1.0, 0.1], [0.2, 0.2, 0.5, 0.3], [0.0, 0.1, 3.0, 2.0]])
    scores = ck.Scores.from_head_grid(grid, "qrhead")
    folder = export_kvpress_duo(scores, tmp_path / "scores", gqa, sink_size=2, recent_size=8)
    sink, recent, gates, streaming = _load_with_kvpress(monkeypatch, folder, "scores", 0.5)
    group_means = grid.reshape(3, 2, 2).mean(-1)  # [[0.8, -0.45], [0.2, 0.4], [0.05, 2.5]]
    assert (sink, recent) == (2, 8)
    assert np.allclose(gates, ((group_means - group_means.min()) / (group_means.max() - group_means.min())).numpy())
    assert torch.equal(streaming.cpu(), torch.tensor([[False, True], [True, False], [True, False]]))


def test_export_checks_its_input(tmp_path, gqa):
    with pytest.raises(InputTypeError, match="token budgets"):
        export_kvpress_duo(HeadBudgetPolicy({}, 4), tmp_path / "x", gqa)
    with pytest.raises(InputError, match="needs the model"):
        export_kvpress_duo(KVPolicy(), tmp_path / "x")
    with pytest.raises(InputError, match="not a DuoAttention pattern folder"):
        read_kvpress_duo(tmp_path)
    assert not (tmp_path / "x").exists()
