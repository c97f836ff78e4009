"""The zoo registry: save a model with its card, find it on the zoo path, load it offline."""

import json

import pytest
import torch

from circuitkit import load_model, zoo_card, zoo_task
from circuitkit.models.zoo_store import config_to_json
from circuitkit.zoo import ZooCard, list_zoo, save_zoo_model


@pytest.fixture
def temp_zoo(tmp_path, monkeypatch, tiny_model, word_tokenizer):
    monkeypatch.setenv("CIRCUITKIT_ZOO_PATH", str(tmp_path))
    card = ZooCard(
        name="tiny-random", description="random weights for registry tests",
        config=config_to_json(tiny_model.cfg), task={"builder": "ioi", "params": {"n_prompts": 4}},
        construction="trained", circuit={"nodes": ["a0.h0"], "edges": []},
    )
    save_zoo_model(tiny_model, card, word_tokenizer, root=tmp_path)
    return tmp_path


def test_round_trip(temp_zoo, tiny_model):
    model = load_model("zoo:tiny-random", device="cpu")
    tokens = model.to_tokens("When Mary and John went")
    with torch.no_grad():
        assert torch.allclose(model(tokens), tiny_model(tokens), atol=1e-5)
    assert "tiny-random" in [c.name for c in list_zoo()]
    assert zoo_card("tiny-random").circuit_nodes == ["a0.h0"]
    task = zoo_task("tiny-random", model)
    assert len(task) == 4 and task.name == "ioi"
    assert not list(temp_zoo.glob(".tiny-random-*"))  # no temp dirs left behind


def test_corrupt_weights_and_card(temp_zoo):
    (temp_zoo / "tiny-random" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        load_model("zoo:tiny-random")
    card = json.loads((temp_zoo / "tiny-random" / "card.json").read_text())
    card["version"] = 99
    (temp_zoo / "tiny-random" / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="version 99"):
        zoo_card("tiny-random")


def test_an_empty_zoo_says_why_and_how_to_fix_it(tmp_path, monkeypatch, capsys):
    from circuitkit.cli import main
    from circuitkit.models import zoo_store

    monkeypatch.setattr(zoo_store, "BUNDLED_ZOO", tmp_path / "site-packages" / "circuitkit" / "data" / "zoo")
    monkeypatch.setenv("CIRCUITKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CIRCUITKIT_ZOO_PATH", raising=False)
    assert zoo_store.list_zoo() == []
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "no zoo models found in" in out and "bundled folder" in out and "is missing" in out
    assert "CIRCUITKIT_ZOO_PATH" in out and str(tmp_path / "home" / "zoo") in out


def test_zoo_train_defaults_to_the_user_folder(tmp_path, monkeypatch):
    from circuitkit.models import zoo_store

    monkeypatch.setenv("CIRCUITKIT_HOME", str(tmp_path / "home"))
    assert zoo_store.user_zoo_dir() == tmp_path / "home" / "zoo"
    assert zoo_store.zoo_dirs()[-2:] == [tmp_path / "home" / "zoo", zoo_store.BUNDLED_ZOO]
    monkeypatch.delenv("CIRCUITKIT_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert zoo_store.user_zoo_dir() == tmp_path / "xdg" / "circuitkit" / "zoo"
