"""How good an SAE is: reconstruction, sparsity, dead latents, and CE loss recovered.

The CE losses come from SAELens's ``evals.get_recons_loss`` (clean run, SAE reconstruction
spliced in at the hook, zero-ablated hook) and explained variance from its
``ExplainedVarianceCalculator``; this module batches them over a token tensor and adds L0 and
the dead-latent fraction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from circuitkit.errors import InputError
from circuitkit.sae.features import check_sae_fits, flat_input, flatten_heads
from circuitkit.tokenizers import check_token_ids


@dataclass
class SAEQuality:
    """Quality of one SAE on one token set.

    Attributes:
        explained_variance: ``1 - E||x - x_hat||^2 / Var(x)`` over all token positions.
        l0: mean number of active latents per token.
        dead_fraction: fraction of latents never active on these tokens.
        mse: mean squared reconstruction error per token (summed over the width).
        ce_clean / ce_spliced / ce_zero_ablation: mean next-token cross-entropy of the model as is,
            with the SAE's reconstruction spliced into the hook, and with the hook zeroed.
        ce_loss_recovered: ``(ce_zero_ablation - ce_spliced) / (ce_zero_ablation - ce_clean)``.
        n_tokens, hook_name, d_sae: what was measured.
    """

    explained_variance: float
    l0: float
    dead_fraction: float
    mse: float
    ce_clean: float
    ce_spliced: float
    ce_zero_ablation: float
    ce_loss_recovered: float
    n_tokens: int
    hook_name: str
    d_sae: int

    def to_frame(self):
        """One-row pandas DataFrame of every field."""
        import pandas as pd

        return pd.DataFrame([asdict(self)])

    def __str__(self) -> str:
        return (f"SAE on {self.hook_name} (d_sae={self.d_sae}, {self.n_tokens} tokens): "
                f"explained variance {self.explained_variance:.3f}, L0 {self.l0:.1f}, dead {self.dead_fraction:.1%}, "
                f"CE clean {self.ce_clean:.3f} / spliced {self.ce_spliced:.3f} / zero-ablated {self.ce_zero_ablation:.3f} "
                f"-> CE loss recovered {self.ce_loss_recovered:.3f}")


@torch.no_grad()
def sae_quality(model, sae, tokens, hook_name: str | None = None, batch_size: int = 32) -> SAEQuality:
    """Measure ``sae`` on ``tokens`` (``[batch, pos]``) at its hook of ``model``."""
    from sae_lens.evals import ExplainedVarianceCalculator, get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    name = check_sae_fits(model, sae, hook_name)
    tokens = check_token_ids(model, tokens)
    if tokens.shape[1] < 2:
        raise InputError("quality needs prompts of at least 2 tokens (CE loss scores next-token predictions)")
    variance = ExplainedVarianceCalculator()
    ever_active = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    l0_sum = mse_sum = 0.0
    ce = {"ce_loss_without_sae": [], "ce_loss_with_sae": [], "ce_loss_with_ablation": []}
    n_tokens = 0
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start:start + batch_size]
        _, cache = model.run_with_cache(batch, names_filter=[name])
        x = flatten_heads(cache[name]).reshape(-1, sae.cfg.d_in).to(sae.device)
        with flat_input(sae):
            feats = sae.encode(x)
            recon = sae.decode(feats)
            losses = get_recons_loss(sae, model, ActivationScaler(), batch, compute_kl=False, compute_ce_loss=True,
                                     hook_name=name)
        variance.add_batch(recon, x)
        active = feats != 0
        ever_active |= active.any(0).cpu()
        l0_sum += float(active.sum())
        mse_sum += float((recon - x).pow(2).sum())
        n_tokens += x.shape[0]
        for key in ce:
            ce[key].append(losses[key].reshape(-1).cpu())
    clean, spliced, zero = (float(torch.cat(ce[k]).mean()) for k in
                            ("ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation"))
    denom = zero - clean
    recovered = (zero - spliced) / denom if abs(denom) > 1e-12 else float("nan")
    return SAEQuality(
        explained_variance=float(variance.compute()), l0=l0_sum / n_tokens,
        dead_fraction=float((~ever_active).float().mean()), mse=mse_sum / n_tokens,
        ce_clean=clean, ce_spliced=spliced, ce_zero_ablation=zero, ce_loss_recovered=recovered,
        n_tokens=n_tokens, hook_name=name, d_sae=int(sae.cfg.d_sae),
    )
