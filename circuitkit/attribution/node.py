"""Node-level attribution patching (Nanda 2023): ``(corrupted_act - clean_act) . dM/d act`` at the
clean run, for head outputs, MLP outputs, z, q, k, v, patterns and whole-layer sites."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit import names
from circuitkit.ablation.edges import INPUT_HOOK, GraphIndex, result_hook
from circuitkit.attribution.common import (
    budget_batch_size,
    check_nonzero_scores,
    prepare_attribution,
    prompt_batches,
    scores_meta,
    stream_mode,
)
from circuitkit.errors import InputError
from circuitkit.models import backend
from circuitkit.scores import Scores

SITE_TARGETS = ("resid_pre", "attn_out", "resid_mid", "resid_post")
ATTRIBUTION_TARGETS = ("head_out", "mlp_out", "nodes", "z", "q", "k", "v", "pattern", *SITE_TARGETS)


def _target_hooks(index: GraphIndex, target: str) -> list[tuple[str, str, int | None]]:
    """(hook name, kind, layer) for a target; kind says how to label its axes."""
    if target not in ATTRIBUTION_TARGETS:
        raise InputError(f"unknown attribution target {target!r}; choose one of {ATTRIBUTION_TARGETS}")
    if target in ("mlp_out", "resid_mid") and not index.has_mlp:
        raise InputError(f"target {target!r} needs MLPs but the model is attention-only; use 'head_out' or 'resid_pre'")
    out: list[tuple[str, str, int | None]] = []
    if target == "nodes":
        out.append((INPUT_HOOK, "input", None))
    for layer in range(index.n_layers):
        if target in ("head_out", "nodes"):
            out.append((result_hook(layer), "heads", layer))
        elif target in ("z", "q", "k", "v"):
            out.append((names.hook(target, layer), "heads", layer))
        elif target == "pattern":
            out.append((names.hook("pattern", layer), "pattern", layer))
        elif target in SITE_TARGETS:
            out.append((names.hook(target, layer), target, layer))
        if target in ("mlp_out", "nodes") and index.has_mlp:
            out.append((names.output_hook(names.mlp(layer)), "mlp", layer))
    return out


def attribution_patching(
    model,
    task,
    target: str = "head_out",
    by_pos: bool = False,
    batch_size: int | None = None,
    progress: bool = True,
    max_memory: float | None = None,
) -> Scores:
    """First-order estimate of patching each activation from the corrupted run into the clean run.

    score = ``sum (corrupted_act - clean_act) * dM/d act`` (gradient at the clean run; summed
    over the activation's feature axis and positions, averaged over prompts). ``target``:
    ``"head_out"`` (per head; computed at ``hook_z``, which is exact since ``W_O`` is linear),
    ``"mlp_out"``, ``"nodes"`` (input, heads, MLPs),
    ``"z"``, ``"q"``, ``"k"``, ``"v"`` (per head), ``"pattern"`` (per head; positions are query
    positions), or a whole-layer site ``"resid_pre"``, ``"attn_out"``, ``"resid_mid"``,
    ``"resid_post"`` (labels ``resid_pre.2``). ``by_pos`` keeps positions: labels ``a1.h0@3``. One forward + backward on the
    clean prompts and one forward on the corrupted prompts per batch; batches hold at most
    ``batch_size`` prompts and fewer where ``max_memory`` (bytes; by default half the memory
    available) holds fewer, as in `eap`.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> scores = ck.attribution_patching(model, task, progress=False)
        >>> [(label, round(value, 1)) for label, value in scores.top(1)]
        [('a1.h0', -12.0)]
    """
    task, index = prepare_attribution(model, task, None, None, batch_size)
    hooks = _target_hooks(index, target)
    hook_names = {h for h, _, _ in hooks}
    n_total = len(task)
    totals: dict[str, Tensor] = {}
    batches = prompt_batches(n_total, budget_batch_size(model, index, task, "nodes", batch_size, max_memory))
    for idx in tqdm(batches, disable=not progress or len(batches) < 2, desc=f"attribution patching ({target})"):
        sub = task.subset(idx.cpu())
        for h, per in _attribution_batch(model, sub, hook_names, n_total).items():
            totals[h] = totals.get(h, 0) + per
    values, labels = [], []
    pos_range = range(task.clean.shape[1])
    for h, kind, layer in hooks:
        t = totals[h]
        if kind == "heads" or kind == "pattern":
            node_names = [names.head(layer, i) for i in range(index.n_heads)]
        elif kind == "mlp":
            node_names, t = [names.mlp(layer)], t[:, None]
        elif kind in SITE_TARGETS:
            node_names, t = [names.site(kind, layer)], t[:, None]
        else:
            node_names, t = [names.INPUT], t[:, None]
        if by_pos:
            for p in pos_range:
                values += t[p].tolist()
                labels += [names.with_pos(nm, p) for nm in node_names]
        else:
            values += t.sum(0).tolist()
            labels += node_names
    check_nonzero_scores(model, task, torch.tensor(values), "attribution_patching")
    return Scores(torch.tensor(values), labels, "attribution-patching", task.name, task.metric_name,
                  meta=scores_meta(model, index, target=target, by_pos=by_pos))


def _attribution_batch(model, sub, hook_names: set[str], n_total: int) -> dict[str, Tensor]:
    """Per hook: ``sum over batch and features of (corrupted - clean) * grad``, ``[pos, ...]``."""
    with stream_mode(model), torch.no_grad():
        _, corrupted = backend.run_with_cache(model, sub.corrupted, hook_names)
    grads: dict[str, Tensor] = {}
    clean: dict[str, Tensor] = {}
    leaf: list[Tensor] = []

    def save(name: str):  # by name: a bridge's hook point carries its own name, not the alias
        def hook(x, hook):
            clean[name] = x.detach()
            x.register_hook(lambda grad: grads.__setitem__(name, grad))
            return x  # a bridge reshapes some hooks' values: the run must go on with the one watched
        return hook

    def make_leaf(x, hook):
        leaf.append(x.detach().requires_grad_(True))
        return leaf[0]

    fwd = [(INPUT_HOOK, make_leaf)] + [(h, save(h)) for h in sorted(hook_names)]
    with stream_mode(model), model.hooks(fwd_hooks=fwd), torch.enable_grad():
        metric = sub.per_prompt(model(sub.clean)).sum() / n_total
        torch.autograd.grad(metric, leaf[0])
    out = {}
    for h in hook_names:
        prod = (corrupted[h] - clean[h]) * grads[h]
        if h.endswith("hook_pattern"):
            out[h] = prod.sum((0, 3)).transpose(0, 1)  # [batch, head, q, k] -> [q, head]
        else:
            out[h] = prod.sum((0, -1))  # [pos, head] or [pos]
    return out
