"""Fixtures shared by the attribution tests."""

import pytest
from model_factory import make_model

from circuitkit.tasks.builders import induction


@pytest.fixture(scope="module")
def task(word_tokenizer):
    return induction(word_tokenizer, n_prompts=4, seq_len=4, seed=0)


@pytest.fixture(scope="module")
def gqa_model(word_tokenizer):
    """RMSNorm + rotary + grouped-query attention (each query head its own key input)."""
    return make_model(word_tokenizer, n_layers=2, n_heads=4, normalization_type="RMS",
                      positional_embedding_type="rotary", n_key_value_heads=2, seed=3)
