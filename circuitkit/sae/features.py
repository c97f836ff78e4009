"""SAE features on a model's activations: encode, top-activating examples, feature cards.

Every function takes the model, the SAE (any SAELens ``SAE``) and tokens ``[batch, pos]``. The
SAE reads the hook named in its config (``sae.cfg.metadata.hook_name``) unless ``hook_name`` is
given. Activations with a head axis (``hook_z``: ``[batch, pos, head, d_head]``) are flattened
to ``[batch, pos, head * d_head]``, as SAELens's activation store does.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuitkit import names
from circuitkit.errors import InputError
from circuitkit.tokenizers import check_token_ids

# --- hook checks ------------------------------------------------------------------------------

def check_hook(model, hook_name: str) -> str:
    """Return ``hook_name`` if the model has it; else ``ValueError`` listing close matches."""
    if not isinstance(hook_name, str) or hook_name not in model.hook_dict:
        close = difflib.get_close_matches(str(hook_name), list(model.hook_dict), n=5, cutoff=0.5)
        hint = f"close matches: {close}" if close else "see `circuitkit info MODEL` for every hook name"
        raise InputError(f"model {model.cfg.model_name!r} has no hook point {hook_name!r}; {hint}")
    return hook_name


def hook_width(model, hook_name: str) -> int:
    """The activation width at ``hook_name`` (trailing dims after ``[batch, pos]`` multiplied)."""
    check_hook(model, hook_name)
    shapes: dict[str, torch.Size] = {}

    def grab(act, hook):
        shapes["shape"] = act.shape

    tokens = torch.zeros((1, 1), dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(hook_name, grab)], return_type=None)
    shape = shapes["shape"]
    width = 1
    for d in shape[2:]:
        width *= int(d)
    return width


def sae_hook_name(sae, hook_name: str | None = None) -> str:
    """The hook the SAE reads: ``hook_name`` if given, else the one in its config."""
    name = hook_name or sae.cfg.metadata.hook_name
    if not name:
        raise InputError("this SAE's config names no hook (cfg.metadata.hook_name); pass hook_name='blocks.L.hook_...'")
    return name


def check_sae_fits(model, sae, hook_name: str | None = None) -> str:
    """Check the SAE can read ``hook_name`` of ``model``; return the hook name.

    Raises ``ValueError`` for an unknown hook (with close matches) or a width mismatch.
    """
    name = check_hook(model, sae_hook_name(sae, hook_name))
    width = hook_width(model, name)
    if int(sae.cfg.d_in) != width:
        raise InputError(
            f"the SAE has d_in={sae.cfg.d_in} but hook {name!r} of model {model.cfg.model_name!r} carries "
            f"{width}-wide activations; use an SAE trained on this hook (circuitkit sae train) or pass the "
            "hook it was trained on"
        )
    return name



def flatten_heads(act: Tensor) -> Tensor:
    """``[batch, pos, ...]`` -> ``[batch, pos, width]`` (a ``hook_z``'s heads side by side)."""
    return act.reshape(*act.shape[:2], -1)


@contextlib.contextmanager
def flat_input(sae) -> Iterator[None]:
    """Feed the SAE flattened ``[..., width]`` activations even if it reshapes ``hook_z`` itself.

    SAELens's hook_z SAEs flatten ``[..., head, d_head]`` inputs in ``forward``; here every
    activation is already flat, so that reshaping is switched off (as SAELens's ``run_evals``
    does) and restored afterwards.
    """
    if not getattr(sae, "hook_z_reshaping_mode", False):
        yield
        return
    sae.turn_off_forward_pass_hook_z_reshaping()
    try:
        yield
    finally:
        sae.turn_on_forward_pass_hook_z_reshaping()


# --- encoding ---------------------------------------------------------------------------------

@torch.no_grad()
def hook_activations(model, tokens, hook_name: str, batch_size: int = 32) -> Tensor:
    """Activations at ``hook_name``, flattened to ``[batch, pos, width]``."""
    tokens = check_token_ids(model, tokens)
    check_hook(model, hook_name)
    out = []
    for start in range(0, len(tokens), batch_size):
        _, cache = model.run_with_cache(tokens[start:start + batch_size], names_filter=[hook_name])
        out.append(flatten_heads(cache[hook_name]))
    return torch.cat(out)


@torch.no_grad()
def encode(model, sae, tokens, hook_name: str | None = None, batch_size: int = 32) -> Tensor:
    """SAE feature activations on ``tokens``: ``[batch, pos, d_sae]``."""
    name = check_sae_fits(model, sae, hook_name)
    acts = hook_activations(model, tokens, name, batch_size)
    with flat_input(sae):
        return torch.cat([sae.encode(acts[i:i + batch_size].to(sae.device)) for i in range(0, len(acts), batch_size)])


def _check_feature(sae, feature: int) -> int:
    if not 0 <= int(feature) < sae.cfg.d_sae:
        raise InputError(f"feature {feature} is outside this SAE's {sae.cfg.d_sae} latents; use 0..{sae.cfg.d_sae - 1}")
    return int(feature)


def _token_strings(model, ids) -> list[str]:
    if model.tokenizer is None:
        return [str(int(i)) for i in ids]
    return [model.tokenizer.decode([int(i)]) for i in ids]


def top_activating_examples(model, sae, tokens, feature: int, k: int = 10, context: int = 8,
                            hook_name: str | None = None, feature_acts: Tensor | None = None):
    """The ``k`` (prompt, position) pairs where ``feature`` fires most, with their context.

    Returns a pandas DataFrame with one row per example: ``rank``, ``prompt``, ``pos``,
    ``activation``, ``token`` (the token at ``pos``), ``context_tokens`` (the ``context`` tokens
    before it and up to 2 after, as strings), ``context_acts`` (the feature's activation on each
    of them) and ``center`` (the index of ``pos`` inside the context). ``feature_acts`` (the
    output of `encode`) skips re-encoding.
    """
    import pandas as pd

    feature = _check_feature(sae, feature)
    tokens = check_token_ids(model, tokens)
    acts = feature_acts if feature_acts is not None else encode(model, sae, tokens, hook_name)
    f_acts = acts[..., feature]
    flat = f_acts.reshape(-1)
    k = min(int(k), flat.numel())
    values, index = torch.topk(flat, k)
    rows = []
    seq = tokens.shape[1]
    for rank, (value, i) in enumerate(zip(values.tolist(), index.tolist(), strict=True)):
        prompt, pos = divmod(i, seq)
        lo, hi = max(0, pos - context), min(seq, pos + 3)
        ids = tokens[prompt, lo:hi].tolist()
        rows.append(dict(rank=rank, prompt=prompt, pos=pos, activation=value,
                         token=_token_strings(model, [tokens[prompt, pos]])[0],
                         context_tokens=_token_strings(model, ids),
                         context_acts=f_acts[prompt, lo:hi].tolist(), center=pos - lo))
    frame = pd.DataFrame(rows, columns=["rank", "prompt", "pos", "activation", "token", "context_tokens",
                                        "context_acts", "center"])
    frame.attrs["feature"] = feature
    return frame


@dataclass
class FeatureCard:
    """What one SAE feature does.

    Attributes:
        feature: the latent index; label: its component id (``f1.resid_pre.17``).
        examples: `top_activating_examples` frame.
        boosted / suppressed: DataFrames (``token``, ``token_id``, ``logit``) of the output tokens
            the feature's decoder direction raises / lowers most through the unembedding
            (`logit_effects`: direct path only, later layers ignored, the final norm's
            weight folded in as SAELens's dashboards do).
        density: fraction of token positions where the feature is active.
        mean_activation: its mean activation where active.
    """

    feature: int
    label: str
    examples: Any
    boosted: Any
    suppressed: Any
    density: float
    mean_activation: float


def feature_label(sae, feature: int, hook_name: str | None = None) -> str:
    """``f{layer}.{hook}.{index}`` via `circuitkit.names.feature`."""
    name = sae_hook_name(sae, hook_name)
    parts = name.split(".")
    layer = int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else 0
    return names.feature(layer, name, feature)


def logit_effects(model, sae, feature: int) -> Tensor:
    """``[d_vocab]``: what feature ``feature``'s decoder direction adds to each output logit.

    The final norm is treated as SAELens's dashboards (sae_dashboard, Neuronpedia) treat it: they
    read ``W_dec[feature] @ W_U`` of a model loaded with ``fold_ln=True``, whose ``W_U`` has the
    final norm's weight folded in and (LayerNorm) is centred over ``d_model``. So here the norm
    acts as a linear map at unit scale: a LayerNorm's centring, then its weight, then ``W_U``
    (``W_dec[feature] @ W_U`` for a model without a final norm); the norm's token-dependent
    ``1/scale`` and its bias (the same for every direction) are left out.
    """
    feature = _check_feature(sae, feature)
    direction = sae.W_dec[feature].detach().to(model.W_U.device, model.W_U.dtype)
    if direction.shape[0] != model.cfg.d_model:
        raise InputError(
            f"feature directions are {direction.shape[0]}-wide but the unembedding reads d_model="
            f"{model.cfg.d_model}; output-token effects exist only for SAEs on the residual stream or "
            "attn_out / mlp_out hooks"
        )
    if model.cfg.normalization_type in ("LN", "LNPre"):  # LayerNorm removes the mean over d_model
        direction = direction - direction.mean()
    weight = getattr(getattr(model, "ln_final", None), "w", None)
    if weight is not None:  # LayerNorm / RMSNorm with its learned weight (not folded into W_U)
        direction = direction * weight.detach()
    return direction @ model.W_U.detach()


def output_logit_effects(model, sae, feature: int, k: int = 10):
    """``(boosted, suppressed)`` frames (``token``, ``token_id``, ``logit``) of the ``k`` tokens
    `logit_effects` ranks highest / lowest."""
    import pandas as pd

    logits = logit_effects(model, sae, feature)
    k = min(k, logits.numel())

    def frame(values, ids):
        return pd.DataFrame({"token": _token_strings(model, ids.tolist()), "token_id": ids.tolist(),
                             "logit": values.tolist()})

    top = torch.topk(logits, k)
    bottom = torch.topk(-logits, k)
    return frame(top.values, top.indices), frame(-bottom.values, bottom.indices)


def writes_residual(model, sae) -> bool:
    """Whether the SAE's decoder writes ``d_model``-wide directions (residual stream, attn_out,
    mlp_out, a transcoder's MLP output): those have output-token effects."""
    return int(sae.W_dec.shape[1]) == int(model.cfg.d_model)


def feature_card(model, sae, feature: int, tokens, k: int = 10, context: int = 8,
                 hook_name: str | None = None, feature_acts: Tensor | None = None,
                 label: str | None = None, n_tokens: int | None = None) -> FeatureCard:
    """Top examples plus top boosted / suppressed output tokens of ``feature``.

    ``feature_acts`` (`encode` of ``tokens``) skips re-encoding; ``label`` overrides the
    component id; ``n_tokens`` output tokens each way (default ``k``). An SAE whose decoder does
    not write ``d_model``-wide directions (``hook_z``) gets empty boosted / suppressed frames.
    """
    import pandas as pd

    feature = _check_feature(sae, feature)
    acts = feature_acts if feature_acts is not None else encode(model, sae, tokens, hook_name)
    f_acts = acts[..., feature]
    active = f_acts > 0
    examples = top_activating_examples(model, sae, tokens, feature, k, context, hook_name, feature_acts=acts)
    if writes_residual(model, sae):
        boosted, suppressed = output_logit_effects(model, sae, feature, k if n_tokens is None else n_tokens)
    else:
        boosted = suppressed = pd.DataFrame({"token": [], "token_id": [], "logit": []})
    density = float(active.float().mean())
    mean_act = float(f_acts[active].mean()) if active.any() else 0.0
    return FeatureCard(feature, label or feature_label(sae, feature, hook_name), examples, boosted, suppressed,
                       density, mean_act)
