"""RelP, relevance patching (Jafari et al. 2025, arXiv 2508.21258): attribution patching whose
backward pass follows layer-wise relevance propagation's rules instead of the plain gradient.

The rules change the backward pass only (every forward value is the model's own), through
TransformerLens hook points, so they hold for every estimator that reads gradients:

* ``ln`` (LN-rule): a LayerNorm / RMSNorm's scale is a constant of the backward pass
  (``hook_scale`` detached), so the norm passes relevance on linearly;
* ``identity`` (Identity-rule): an MLP's activation passes relevance as if linear, with slope
  ``act(x) / x`` (ReLU's gradient already is);
* ``half`` (Half-rule): a gated MLP's product ``act(gate) * up`` gives each factor half;
* ``attention`` (AH-rule, off by default as in the paper's code): the attention pattern is a
  constant, so relevance reaches the heads' values only.

`relp` scores edges (EAP's contraction, `eap`) or nodes and sites (`attribution_patching`'s
targets) with these rules, at the same cost: two forwards and one backward per batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from circuitkit import names
from circuitkit.ablation.kinds import DEFAULT_ABLATION
from circuitkit.attribution.edge import eap
from circuitkit.attribution.node import ATTRIBUTION_TARGETS, attribution_patching
from circuitkit.errors import InputError
from circuitkit.models import backend
from circuitkit.scores import Scores

__all__ = ["RELP_RULES", "relp", "relp_rules"]

RELP_RULES = ("ln", "identity", "half", "attention")
DEFAULT_RULES = ("ln", "identity", "half")
_STABILIZER = 1e-6  # keeps act(x) / x finite where x is 0 (the slope there is taken as act'(0)-free 0)


def _passthrough(live: Tensor, slope: Tensor, x: Tensor) -> Tensor:
    """``live``'s value, with gradient ``slope * d x`` (``slope`` a constant)."""
    return live.detach() + (x - x.detach()) * slope.detach()


def _stabilized(x: Tensor) -> Tensor:
    return x + _STABILIZER * torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


@contextmanager
def relp_rules(model, rules: Sequence[str] = DEFAULT_RULES) -> Iterator[None]:
    """Within the block, ``model``'s backward pass follows the LRP ``rules`` (see the module);
    forward values are unchanged. The hooks are permanent for the block (so methods that reset
    their own hooks keep them) and removed, exactly those, at its end."""
    unknown = [r for r in rules if r not in RELP_RULES]
    if unknown:
        raise InputError(f"unknown RelP rules {unknown}; choose among {RELP_RULES}")
    if backend.is_bridge(model):
        raise InputError("relp applies its rules through HookedTransformer's hook points (hook_scale, the MLP's "
                         "hook_pre / hook_post); load the model with backend='hooked' where TransformerLens converts "
                         "it, or use eap / attribution_patching on this bridge")
    cfg = model.cfg
    if cfg.act_fn is not None and cfg.act_fn.startswith("solu"):
        raise InputError(f"relp has no rule for {cfg.act_fn!r} (a LayerNorm inside the MLP); use eap instead")
    added: list[tuple[object, object]] = []

    def add(hook_name: str, fn) -> None:
        point = model.hook_dict[hook_name]
        before = list(point.fwd_hooks)
        point.add_hook(fn, dir="fwd", is_permanent=True, prepend=True)
        added.extend((point, h) for h in point.fwd_hooks if h not in before)

    captured: dict[str, Tensor] = {}
    for hook_name in model.hook_dict:
        if "ln" in rules and hook_name.endswith("hook_scale"):
            add(hook_name, lambda x, hook: x.detach())
        if "attention" in rules and hook_name.endswith("attn.hook_pattern"):
            add(hook_name, lambda x, hook: x.detach())
    if not cfg.attn_only and ({"identity", "half"} & set(rules)):
        for layer, block in enumerate(model.blocks):
            mlp = block.mlp
            pre, post = names.hook("pre", layer), names.hook("post", layer)
            gated = names.hook("pre_linear", layer) in model.hook_dict

            def keep(x, hook, key=pre):
                captured[key] = x
                return x

            add(pre, keep)
            if gated:
                linear = names.hook("pre_linear", layer)

                def keep_linear(x, hook, key=linear):
                    captured[key] = x
                    return x

                add(linear, keep_linear)

            def rule(y, hook, pre=pre, mlp=mlp, gated=gated, layer=layer):
                x = captured.pop(pre)
                act = mlp.act_fn(x)
                slope = act / _stabilized(x) if "identity" in rules else torch.func.grad(
                    lambda t: mlp.act_fn(t).sum())(x)  # noqa: E731 (the plain derivative)
                if not gated:
                    return _passthrough(y, slope, x)
                up = captured.pop(names.hook("pre_linear", layer))
                share = 0.5 if "half" in rules else 1.0
                return y.detach() + share * ((x - x.detach()) * (slope * up).detach()
                                             + (up - up.detach()) * act.detach())

            add(post, rule)
    try:
        yield
    finally:
        for point, handle in added:
            handle.hook.remove()
            if handle in point.fwd_hooks:
                point.fwd_hooks.remove(handle)


def relp(model, task, target: str = "edges", *, ablation: str = DEFAULT_ABLATION,
         rules: Sequence[str] = DEFAULT_RULES, progress: bool = False, source: dict[str, Tensor] | None = None,
         batch_size: int | None = None, max_memory: float | None = None, by_pos: bool = False) -> Scores:
    """Relevance patching: ``target="edges"`` scores every edge of the graph as `eap` does (with
    ``ablation``'s source), any other target as `attribution_patching` does (``"head_out"``,
    ``"mlp_out"``, ``"nodes"``, ``"resid_pre"``, ... with the corrupted run as source), each with the
    backward pass following the LRP ``rules`` (`relp_rules`). Same cost as the plain estimator;
    ``batch_size``, ``max_memory`` and ``by_pos`` as theirs.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:ioi-trained")
        >>> task = ck.zoo_task("ioi-trained", model)
        >>> scores = ck.relp(model, task, target="mlp_out")
        >>> scores.method, scores.labels
        ('relp', ['m0', 'm1', 'm2'])
    """
    if target != "edges" and target not in ATTRIBUTION_TARGETS:
        raise InputError(f"unknown relp target {target!r}; choose 'edges' or one of {ATTRIBUTION_TARGETS}")
    with relp_rules(model, rules):
        common = {"batch_size": batch_size, "max_memory": max_memory, "by_pos": by_pos, "progress": progress}
        if target == "edges":
            scores = eap(model, task, ablation=ablation, source=source, **common)
        else:
            if source is not None or ablation != DEFAULT_ABLATION:
                raise InputError("node relp patches in the corrupted run's activations (as attribution_patching); "
                                 "ablation / source are for target='edges'")
            scores = attribution_patching(model, task, target, **common)
    scores.method = "relp"
    scores.meta["rules"] = list(rules)
    return scores
