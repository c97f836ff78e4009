"""Shared SAE fixtures: a briefly trained SAE on the tiny model and an exactly reconstructing one."""

from __future__ import annotations

import pytest
import torch

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="session")
def sae_tokens(word_tokenizer):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(4, len(word_tokenizer), (48, 16), generator=gen)


@pytest.fixture(scope="session")
def trained_sae(tiny_model, sae_tokens):
    from circuitkit.sae import train_sae

    return train_sae(tiny_model, HOOK, sae_tokens, "standard", d_sae=64, l1_coefficient=1.0, steps=150,
                     batch_size_tokens=128, context_size=16, progress=False)


@pytest.fixture(scope="session")
def identity_sae():
    return _identity_sae


def _identity_sae(d_in: int, hook_name: str):
    """A ReLU SAE that reconstructs exactly: latents relu(x), relu(-x); decoder [I; -I]."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=2 * d_in, apply_b_dec_to_input=False))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.cfg.metadata.hook_name = hook_name
    return sae
