"""Attribution of a task metric to SAE features, with the SAE spliced into the model.

The SAE replaces the activation at its hook with ``decode(encode(x)) + error``, where the
error term ``x - decode(encode(x))`` is SAELens's own (``SAE.forward`` with the error term on:
computed without gradients and without the SAE's hooks). The forward pass is therefore
unchanged, and a feature is patched through SAELens's ``hook_sae_acts_post`` hook point, leaving
the error term as it was on the clean run.

Attribution patching (first-order): ``score_f = sum_{prompt,pos} (a_f(corrupted) - a_f(clean))
* dM/da_f`` evaluated on the clean run, where ``M`` is the task metric averaged over prompts.
`feature_patching` is the slow exact counterpart (one forward per feature).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

from circuitkit.errors import InputError
from circuitkit.sae.features import check_sae_fits, encode, feature_label, flat_input
from circuitkit.scores import Scores
from circuitkit.tokenizers import check_token_ids


@contextlib.contextmanager
def spliced_sae(model, sae, hook_name: str | None = None,
                acts_hook: Callable[[Tensor], Tensor | None] | None = None) -> Iterator[str]:
    """Context manager: run ``model`` with ``sae`` spliced in at its hook, error term kept.

    ``acts_hook(feature_acts [batch, pos, d_sae]) -> new acts | None`` sees (and may replace)
    the feature activations through SAELens's ``hook_sae_acts_post``. Yields the hook name.
    """
    name = check_sae_fits(model, sae, hook_name)

    def splice(act: Tensor, hook) -> Tensor:
        shape = act.shape
        out = sae(act.reshape(*shape[:2], -1).to(sae.device))
        return out.to(act.device, act.dtype).reshape(shape)

    sae_hooks = []
    if acts_hook is not None:
        sae_hooks.append(("hook_sae_acts_post", lambda acts, hook: acts_hook(acts)))
    previous = sae.use_error_term
    with warnings.catch_warnings():
        # SAELens steers users to HookedSAETransformer.add_sae for this flag; our model is a
        # plain HookedTransformer, so the flag is what we need.
        warnings.simplefilter("ignore", DeprecationWarning)
        sae.use_error_term = True
    try:
        with flat_input(sae), sae.hooks(fwd_hooks=sae_hooks), model.hooks(fwd_hooks=[(name, splice)]):
            yield name
    finally:
        sae._use_error_term = previous


def _task_sae(model, sae, task, hook_name):
    task.check_model(model)
    return check_sae_fits(model, sae, hook_name)


def _feature_labels(sae, name: str, features: list[int]) -> list[str]:
    return [feature_label(sae, f, name) for f in features]


def _features(sae, features: Iterable[int] | None) -> list[int]:
    if features is None:
        return list(range(sae.cfg.d_sae))
    out = [int(f) for f in features]
    bad = [f for f in out if not 0 <= f < sae.cfg.d_sae]
    if bad:
        raise InputError(f"features {bad[:5]} are outside this SAE's {sae.cfg.d_sae} latents; use 0..{sae.cfg.d_sae - 1}")
    return out


def feature_attribution(model, sae, task, hook_name: str | None = None,
                        features: Iterable[int] | None = None) -> Scores:
    """Attribution-patching scores of ``task``'s metric for each SAE feature.

    Returns Scores labelled ``f{layer}.{hook}.{index}`` (``names.feature``), method
    ``"sae-attribution"``; ``meta`` holds the hook, the clean and corrupted metric.
    """
    name = _task_sae(model, sae, task, hook_name)
    feats = _features(sae, features)
    clean, corrupted = (check_token_ids(model, t) for t in (task.clean, task.corrupted))
    corrupted_acts = encode(model, sae, corrupted, name).detach()
    captured: dict[str, Tensor] = {}

    def leaf(acts: Tensor) -> Tensor:
        acts = acts.detach().requires_grad_(True)
        captured["acts"] = acts
        return acts

    with spliced_sae(model, sae, name, leaf):
        logits = model(clean)
    metric = task.score(logits)
    (grad,) = torch.autograd.grad(metric, captured["acts"])
    with torch.no_grad():
        corrupted_metric = float(task.score(model(corrupted)))
    delta = corrupted_acts - captured["acts"].detach()
    values = (delta * grad).sum(dim=(0, 1))[feats]
    return Scores(values, _feature_labels(sae, name, feats), "sae-attribution", task=task.name,
                  metric=task.metric_name,
                  meta={"hook_name": name, "clean_metric": float(metric.detach()), "corrupted_metric": corrupted_metric,
                        "d_sae": int(sae.cfg.d_sae)})


@torch.no_grad()
def feature_patching(model, sae, task, features: Iterable[int], hook_name: str | None = None) -> Scores:
    """Exact patching: metric change when each feature is set to its corrupted activation.

    One forward pass per feature, with the SAE spliced in and the clean error term kept.
    Same labels and sign convention as `feature_attribution`.
    """
    name = _task_sae(model, sae, task, hook_name)
    feats = _features(sae, features)
    clean, corrupted = (check_token_ids(model, t) for t in (task.clean, task.corrupted))
    corrupted_acts = encode(model, sae, corrupted, name)
    with spliced_sae(model, sae, name):
        base = float(task.score(model(clean)))
    values = []
    for f in feats:
        def patch(acts: Tensor, f=f) -> Tensor:
            acts = acts.clone()
            acts[..., f] = corrupted_acts[..., f]
            return acts

        with spliced_sae(model, sae, name, patch):
            values.append(float(task.score(model(clean))) - base)
    return Scores(torch.tensor(values), _feature_labels(sae, name, feats), "sae-patching", task=task.name,
                  metric=task.metric_name, meta={"hook_name": name, "clean_metric": base})
