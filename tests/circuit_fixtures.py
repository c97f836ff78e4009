"""Fixtures (imported by the test modules; a conftest.py here would shadow tests/conftest.py for
`from conftest import ...`): A tiny attention-only model whose circuit is known by construction: heads a0.h1 and a1.h0
have W_O = 0, so they write nothing and every edge out of (or into) them is irrelevant."""

import pytest
import torch

LIVE_HEADS = ["a0.h0", "a1.h1"]
DEAD_HEADS = ["a0.h1", "a1.h0"]


def dead_head_model(tokenizer):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, d_vocab=len(tokenizer), n_ctx=64,
                                  attn_only=True, act_fn="gelu", normalization_type="LN", seed=3, device="cpu",
                                  model_name="dead-heads")
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.eval()
    with torch.no_grad():
        model.blocks[0].attn.W_O[1] = 0
        model.blocks[1].attn.W_O[0] = 0
    return model


@pytest.fixture(scope="session")
def known_model(word_tokenizer):
    return dead_head_model(word_tokenizer)


@pytest.fixture(scope="session")
def known_task(word_tokenizer):
    from circuitkit.tasks.builders import induction

    return induction(word_tokenizer, n_prompts=8, seq_len=6)


@pytest.fixture(scope="session")
def exact_scores(known_model, known_task):
    from circuitkit.attribution import exact_edge_patching

    return exact_edge_patching(known_model, known_task, ablation="mean", progress=False)
