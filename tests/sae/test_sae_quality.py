from __future__ import annotations

import pytest
import torch

from circuitkit.sae import sae_quality

HOOK = "blocks.1.hook_resid_pre"


def test_exact_sae_recovers_everything(tiny_model, identity_sae, sae_tokens):
    sae = identity_sae(tiny_model.cfg.d_model, HOOK)
    q = sae_quality(tiny_model, sae, sae_tokens, batch_size=20)
    assert q.explained_variance == pytest.approx(1.0, abs=1e-5)
    assert q.ce_spliced == pytest.approx(q.ce_clean, abs=1e-4)
    assert q.ce_loss_recovered == pytest.approx(1.0, abs=1e-3)
    assert q.l0 == pytest.approx(tiny_model.cfg.d_model, abs=1e-6)  # each dim fires in exactly one of +/-
    assert q.n_tokens == sae_tokens.numel()


def test_quality_matches_the_slow_path(tiny_model, trained_sae, sae_tokens):
    q = sae_quality(tiny_model, trained_sae, sae_tokens, batch_size=7)
    frame = q.to_frame()
    assert list(frame.columns)[:3] == ["explained_variance", "l0", "dead_fraction"] and len(frame) == 1

    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(sae_tokens)
        x = cache[HOOK].reshape(-1, tiny_model.cfg.d_model)
        feats = trained_sae.encode(x)
        recon = trained_sae.decode(feats)
        ev = 1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()

        def ce(hook_fn=None):
            hooks = [(HOOK, hook_fn)] if hook_fn else []
            return float(tiny_model.run_with_hooks(sae_tokens, return_type="loss", fwd_hooks=hooks))

        clean = ce()
        spliced = ce(lambda act, hook: trained_sae.decode(trained_sae.encode(act)))
        zero = ce(lambda act, hook: torch.zeros_like(act))
    assert q.explained_variance == pytest.approx(float(ev), abs=1e-4)
    assert q.l0 == pytest.approx(float((feats > 0).sum(-1).float().mean()), abs=1e-4)
    assert q.dead_fraction == pytest.approx(float((feats.amax(0) <= 0).float().mean()))
    assert q.ce_clean == pytest.approx(clean, abs=1e-4)
    assert q.ce_spliced == pytest.approx(spliced, abs=1e-4)
    assert q.ce_zero_ablation == pytest.approx(zero, abs=1e-4)
    assert q.ce_loss_recovered == pytest.approx((zero - spliced) / (zero - clean), abs=1e-4)


def test_sae_width_must_match_the_hook(tiny_model, random_sae, sae_tokens):
    sae = random_sae(tiny_model.cfg.d_model + 1, 16, HOOK)
    with pytest.raises(ValueError, match=r"d_in=33 but hook 'blocks.1.hook_resid_pre'.*32-wide"):
        sae_quality(tiny_model, sae, sae_tokens)
    with pytest.raises(ValueError, match="no hook point 'blocks.9.hook_resid_pre'"):
        sae_quality(tiny_model, random_sae(32, 16, "blocks.9.hook_resid_pre"), sae_tokens)
