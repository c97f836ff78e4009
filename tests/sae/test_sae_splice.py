"""Several SAEs and a transcoder spliced at once: the forward pass is unchanged, gradients pass
through the splice as through the identity, and an SAE that does not fit its hook fails early."""

from __future__ import annotations

import pytest
import torch

from circuitkit.sae.splice import make_sites, splice_run
from circuitkit.tasks.builders import ioi


@pytest.fixture(scope="module")
def task(word_tokenizer):
    return ioi(word_tokenizer, n_prompts=6)


def _transcoder(d_in: int, d_out: int, hook_in: str, hook_out: str, seed: int = 0):
    from sae_lens import Transcoder, TranscoderConfig

    torch.manual_seed(seed)
    tc = Transcoder(TranscoderConfig(d_in=d_in, d_sae=40, d_out=d_out, apply_b_dec_to_input=False))
    with torch.no_grad():
        tc.b_enc.uniform_(-0.1, 0.1)
    tc.cfg.metadata.hook_name = hook_in
    tc.cfg.metadata.hook_name_out = hook_out
    return tc


@pytest.fixture(scope="module")
def saes(random_sae):
    return [random_sae(32, 48, "blocks.1.hook_resid_pre", seed=1),
            random_sae(32, 40, "blocks.0.hook_attn_out", seed=2),
            random_sae(32, 24, "blocks.1.hook_resid_post", seed=3),
            _transcoder(32, 32, "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", seed=4)]


def test_sites_come_in_computation_order(tiny_model, saes):
    sites = make_sites(tiny_model, saes)
    assert [s.hook_out for s in sites] == ["blocks.0.hook_attn_out", "blocks.0.hook_mlp_out",
                                           "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    assert sites[1].is_transcoder and sites[1].feature(3, 5) == "f0.mlp_out.3@5"
    assert sites[2].error(4) == "e1.resid_pre@4"


def test_every_feature_and_error_kept_reproduces_the_logits(tiny_model, saes, task):
    sites = make_sites(tiny_model, saes)
    with torch.no_grad():
        clean = tiny_model(task.clean)
        with splice_run(tiny_model, sites) as rec:
            spliced = tiny_model(task.clean)
    torch.testing.assert_close(spliced, clean, atol=1e-4, rtol=1e-4)
    # The decomposition is not trivial: the features carry a real part of each activation.
    assert all(float(rec.acts[i].abs().sum()) > 0 for i in range(len(sites)))
    assert all(float(rec.errors[i].abs().mean()) > 1e-3 for i in range(len(sites)))


def test_gradients_pass_the_splice_as_the_identity(tiny_model, saes, task):
    # d out / d x is the identity: the input gradient is the unspliced model's. Features and error
    # are separate inputs of the output: d m / d error equals d m / d (site output).
    sites = make_sites(tiny_model, saes)
    with splice_run(tiny_model, sites, input_leaf=True) as rec:
        m = task.score(tiny_model(task.clean))
    (g_spliced,) = torch.autograd.grad(m, [rec.input], retain_graph=True)
    g_err, g_acts = torch.autograd.grad(m, [rec.leaves_errors[2], rec.leaves_acts[2]])
    with splice_run(tiny_model, [], input_leaf=True) as plain:
        m2 = task.score(tiny_model(task.clean))
    (g_plain,) = torch.autograd.grad(m2, [plain.input])
    torch.testing.assert_close(g_spliced, g_plain, atol=1e-5, rtol=1e-4)
    # d m / d acts = W_dec @ d m / d error (the decoder is the only way features reach the output).
    torch.testing.assert_close(g_acts, g_err @ sites[2].sae.W_dec.T, atol=1e-5, rtol=1e-4)


def test_a_misfit_sae_fails_before_any_work(tiny_model, random_sae):
    with pytest.raises(ValueError, match="d_in=24 but that hook .* carries 32-wide"):
        make_sites(tiny_model, [random_sae(24, 16, "blocks.1.hook_resid_pre")])
    with pytest.raises(ValueError, match="no hook point 'blocks.1.hook_resid_pree'.*close matches"):
        make_sites(tiny_model, [random_sae(32, 16, "blocks.1.hook_resid_pree")])
    with pytest.raises(ValueError, match="two dictionaries rewrite"):
        make_sites(tiny_model, [random_sae(32, 16, "blocks.1.hook_resid_pre"),
                                random_sae(32, 8, "blocks.1.hook_resid_pre")])
    tc = _transcoder(32, 32, "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out")
    tc.cfg.metadata.hook_name_out = None
    with pytest.raises(ValueError, match="names no output hook"):
        make_sites(tiny_model, [tc])
    with pytest.raises(ValueError, match="d_out=16 but 'blocks.0.hook_mlp_out' carries 32-wide"):
        make_sites(tiny_model, {("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"): _transcoder(32, 16, "x", "y")})
    with pytest.raises(ValueError, match="comes after its output"):
        make_sites(tiny_model, {("blocks.1.hook_resid_pre", "blocks.0.hook_mlp_out"): _transcoder(32, 32, "x", "y")})
    with pytest.raises(ValueError, match="never reached in a forward pass"):
        make_sites(tiny_model, {("blocks.0.hook_mlp_in", "blocks.0.hook_mlp_out"): _transcoder(32, 32, "x", "y")})
