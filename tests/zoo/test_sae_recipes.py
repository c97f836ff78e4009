"""The zoo's SAE recipes: one per model with SAEs, matching what is shipped; trained ones deterministic.

Whether the full tiny-lm recipe reproduces the shipped weights (it does, bit for bit, in about 3
CPU-minutes per SAE) is checked by ``benchmarks/zoo_saes.py``, too slow for the suite; here a
short run of the same recipe is run twice.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from circuitkit.models import load_model
from circuitkit.models.zoo_store import BUNDLED_ZOO, load_zoo_model, zoo_card, zoo_tokenizer
from circuitkit.sae.train import training_tokens
from circuitkit.zoo import recipes
from circuitkit.zoo.feature_saes import SAE_DIR, SITES
from circuitkit.zoo.sae_recipes import (
    SAE_RECIPES,
    TINY_LM_SAES,
    AnalyticSAEs,
    TrainedSAEs,
    build_saes,
)


def shipped_hooks(name: str) -> list[str]:
    return sorted(p.name for p in (BUNDLED_ZOO / name / SAE_DIR).iterdir() if p.is_dir())


def test_every_shipped_sae_folder_has_its_recipe():
    with_saes = sorted(p.parent.name for p in BUNDLED_ZOO.glob(f"*/{SAE_DIR}") if p.is_dir())
    assert with_saes == sorted(SAE_RECIPES) == ["induction-handbuilt", "tiny-lm"]
    assert isinstance(SAE_RECIPES["induction-handbuilt"], AnalyticSAEs)
    assert shipped_hooks("induction-handbuilt") == sorted(SITES)
    assert SAE_RECIPES["tiny-lm"] is TINY_LM_SAES and isinstance(TINY_LM_SAES, TrainedSAEs)


@pytest.mark.parametrize("hook", TINY_LM_SAES.hooks)
def test_the_tiny_lm_recipe_is_what_the_shipped_cfg_records(hook):
    assert shipped_hooks("tiny-lm") == sorted(TINY_LM_SAES.hooks)
    cfg = json.loads((BUNDLED_ZOO / "tiny-lm" / SAE_DIR / hook / "cfg.json").read_text())
    recipe = TINY_LM_SAES
    assert (cfg["architecture"], cfg["d_sae"], cfg["k"]) == (recipe.architecture, recipe.d_sae, recipe.config.k)
    assert cfg["metadata"]["hook_name"] == hook and cfg["metadata"]["model_name"] == "tiny-lm"
    assert cfg["metadata"]["context_size"] == recipe.config.context_size
    record = recipe.to_json()
    assert record["steps"] == 1500 and record["seed"] == 0 and record["corpus"] == "python_docs_corpus(800_000)"


def test_a_short_run_of_the_tiny_lm_recipe_is_deterministic():
    model = load_model("zoo:tiny-lm", device="cpu")
    # the recipe with 4 steps on the first 64 rows of its corpus (the whole corpus costs seconds per run)
    rows = training_tokens(model, TINY_LM_SAES.corpus, TINY_LM_SAES.config.context_size, n_chars=40_000)[:64]
    short = dataclasses.replace(TINY_LM_SAES, hooks=TINY_LM_SAES.hooks[:1], corpus=rows,
                                config=dataclasses.replace(TINY_LM_SAES.config, steps=4, batch_size_tokens=256))
    a = short.build(model, progress=False)
    b = short.build(model, progress=False)
    (hook,) = a
    assert hook == TINY_LM_SAES.hooks[0] and a[hook].cfg.d_sae == 512
    for key, value in a[hook].state_dict().items():
        assert value.equal(b[hook].state_dict()[key]), key
    other = dataclasses.replace(short, config=dataclasses.replace(short.config, seed=1)).build(model, progress=False)
    assert not other[hook].W_dec.equal(a[hook].W_dec)  # the seed is what makes it repeatable


def test_train_without_saes_writes_the_model_alone(tmp_path, monkeypatch):
    card = zoo_card("induction-handbuilt")
    shipped = (load_zoo_model("induction-handbuilt"), zoo_tokenizer(card), card)
    monkeypatch.setattr(recipes, "build", lambda name, seed=None, progress=True: shipped)  # skip the rebuild
    folder = recipes.train("induction-handbuilt", root=tmp_path, progress=False, saes=False)
    assert folder.is_dir() and not (folder / SAE_DIR).exists()
    folder = recipes.train("induction-handbuilt", root=tmp_path, progress=False)
    assert sorted(p.name for p in (folder / SAE_DIR).iterdir()) == sorted(SITES)
    assert build_saes("retrieval-handbuilt", None, None) == {}


def test_zoo_train_tiny_lm_writes_its_trained_saes(tmp_path, monkeypatch):
    from circuitkit.cli import main
    from circuitkit.sae.train import load_sae

    card = zoo_card("tiny-lm")
    model = load_zoo_model("tiny-lm")
    monkeypatch.setattr(recipes, "build", lambda name, seed=None, progress=True: (model, zoo_tokenizer(card), card))
    rows = training_tokens(model, None, 64, n_chars=20_000)[:32]  # the recipe, shortened: 2 steps on 32 rows
    short = dataclasses.replace(TINY_LM_SAES, corpus=rows,
                                config=dataclasses.replace(TINY_LM_SAES.config, steps=2, batch_size_tokens=256))
    monkeypatch.setitem(SAE_RECIPES, "tiny-lm", short)
    assert main(["zoo", "train", "tiny-lm", "--out", str(tmp_path), "--no-progress"]) == 0
    folder = tmp_path / "tiny-lm"
    assert sorted(p.name for p in (folder / SAE_DIR).iterdir()) == sorted(TINY_LM_SAES.hooks)
    for hook in TINY_LM_SAES.hooks:
        sae = load_sae(folder / SAE_DIR / hook)
        assert sae.cfg.metadata.hook_name == hook and sae.cfg.d_sae == 512 and sae.cfg.k == 16
    assert main(["zoo", "train", "tiny-lm", "--out", str(tmp_path), "--no-progress", "--no-saes"]) == 0
    assert not (folder / SAE_DIR).exists() and (folder / "model.safetensors").exists()
