"""A temporary zoo of two tiny random models for study tests (the real zoo is built elsewhere)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def study_zoo(tmp_path_factory, word_tokenizer):
    """Folder holding zoo models ``tiny-attn`` (2x2, attention-only) and ``tiny-mlp`` (2x2 with MLPs)."""
    from circuitkit.models.zoo_store import config_to_json
    from circuitkit.zoo import ZooCard, save_zoo_model

    root = tmp_path_factory.mktemp("study-zoo")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    for name, attn_only, seed in (("tiny-attn", True, 1), ("tiny-mlp", False, 2)):
        cfg = HookedTransformerConfig(
            n_layers=2, d_model=16, d_head=8, n_heads=2, d_mlp=None if attn_only else 64, d_vocab=len(word_tokenizer),
            n_ctx=64, act_fn="gelu", normalization_type="LN", attn_only=attn_only, seed=seed,
            device="cpu", model_name=name)
        model = HookedTransformer(cfg, tokenizer=word_tokenizer).eval()
        card = ZooCard(name=name, description="random weights for study tests", config=config_to_json(model.cfg),
                       task={"builder": "induction", "params": {"n_prompts": 4}})
        save_zoo_model(model, card, word_tokenizer, root=root)
    return root


@pytest.fixture
def zoo_env(study_zoo, monkeypatch):
    monkeypatch.setenv("CIRCUITKIT_ZOO_PATH", str(study_zoo))
    return study_zoo
