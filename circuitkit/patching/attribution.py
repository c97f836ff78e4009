"""Gradient attribution over nodes and edges: attribution patching, EAP, EAP-IG, and the exact
edge patching they approximate.

Sign convention (shared by every function here, so their scores are directly comparable): a
score estimates ``metric(clean run with the component / edge ablated) - metric(clean run)``.
With ``logit_diff`` the components a behaviour relies on get negative scores; rank by
``abs`` (``Scores.top`` does) when the direction does not matter.

* :func:`attribution_patching` (Nanda 2023): ``(corrupted_act - clean_act) . dM/d act`` at the
  clean run, for node-level activations (head outputs, MLP outputs, z, q, k, v, patterns).
* :func:`eap` (Syed et al. 2023): for the edge ``u -> v``,
  ``(out_u_source - out_u_clean) . dM/d input_v`` with gradients at v's input (a head's q/k/v
  input, an MLP's input, the final residual) from one forward + backward pass.
* :func:`eap_ig` (Hanna et al. 2024): the same difference times the gradient at ``input_v``
  averaged over runs whose input embeddings are interpolated from the source to the clean
  ones, ``alpha = k / steps`` for ``k = 1..steps`` (``steps=1`` is EAP).
* ``qk_fix=True`` (either of the two): AtP*'s QK fix (Kramar et al. 2024) for edges into
  queries and keys: the exact change of the head's attention pattern times dM/d pattern.
* :func:`exact_edge_patching`: ablate each edge alone with :func:`graph.run_with_mask` (many
  edges per batched forward pass) and measure the metric change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.utilities import get_act_name

from circuitkit import names
from circuitkit.patching import graph as g
from circuitkit.scores import Scores

SITE_TARGETS = ("resid_pre", "attn_out", "resid_mid", "resid_post")
ATTRIBUTION_TARGETS = ("head_out", "mlp_out", "nodes", "z", "q", "k", "v", "pattern", *SITE_TARGETS)


# --- shared checks ----------------------------------------------------------------------------

def _prepare(model, task, ablation: str | None = None, steps: int | None = None, batch_size: int | None = None):
    """Validate everything before any work starts; returns the task on the model's device."""
    if ablation is not None and ablation not in g.ABLATION_KINDS:
        raise ValueError(f"unknown ablation {ablation!r}; choose one of {g.ABLATION_KINDS}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer (number of integrated-gradient points), got {steps!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    task.check_model(model)
    index = g.graph_index(model)
    return task.to(g._device(model)), index


def _batches(n: int, batch_size: int | None) -> list[Tensor]:
    size = n if batch_size is None else batch_size
    return [torch.arange(i, min(n, i + size)) for i in range(0, n, size)]


def _rows(source: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    """Source outputs of some prompts (per-position means / zeros have one row for all)."""
    return {k: v if v.shape[0] == 1 else v[idx.to(v.device)] for k, v in source.items()}


def _meta(model, index: g.GraphIndex, **extra) -> dict:
    return {"n_layers": index.n_layers, "n_heads": index.n_heads, "model": model.cfg.model_name, **extra}


# --- EAP and EAP-IG ---------------------------------------------------------------------------

def _edge_matrix(
    model,
    task,
    index: g.GraphIndex,
    source: dict[str, Tensor],
    steps: int | None,
    batch_size: int | None,
    progress: bool,
    interpolate: str = "inputs",
) -> Tensor:
    """``[n_slots, n_upstream]`` scores: ``sum (out_source - out_clean) . mean_alpha dM/d input_v``.

    ``steps=None``: plain EAP, one forward + backward per prompt batch at the clean run, with
    the clean outputs recorded in that same forward pass. Otherwise integrated gradients over
    ``steps`` points: the input embeddings are interpolated (``interpolate="inputs"``), or, one
    group at a time, the outputs of the input, each layer's heads and each MLP
    (``"activations"``; the gradients of all the groups' runs are averaged).
    """
    n_total = len(task)
    scores = torch.zeros(index.shape, device=g._device(model))
    batches = _batches(n_total, batch_size)
    alphas = [1.0] if steps is None else [k / steps for k in range(1, steps + 1)]
    groups = _output_groups(index) if steps is not None and interpolate == "activations" else [None]
    bar = tqdm(total=len(batches) * len(alphas) * len(groups), disable=not progress,
               desc="EAP" if steps is None else f"EAP-IG ({steps} steps, {interpolate})")
    for idx in batches:
        sub = task.subset(idx.cpu())
        src = _rows(source, idx)
        # IG runs are not at the clean point, so the clean outputs come from their own pass.
        clean = None if steps is None else g.node_outputs(model, sub.clean)
        for group in groups:
            for alpha in alphas:
                _accumulate_edge_grads(model, sub, index, src, clean, alpha, n_total, scores, group)
                bar.update()
    bar.close()
    return scores / (len(alphas) * len(groups))


def _output_groups(index: g.GraphIndex) -> list[tuple[str, list[str]]]:
    """``(hook, nodes)``: where each group's summed output enters the residual stream."""
    groups = [(g.INPUT_HOOK, [names.INPUT])]
    for layer in range(index.n_layers):
        groups.append((get_act_name("attn_out", layer), [names.head(layer, h) for h in range(index.n_heads)]))
        if index.has_mlp:
            groups.append((names.output_hook(names.mlp(layer)), [names.mlp(layer)]))
    return groups


def _accumulate_edge_grads(model, sub, index, src, clean, alpha, n_total, scores,
                           group: tuple[str, list[str]] | None = None) -> None:
    """Add one run's ``(out_source - out_clean) . dM/d input_v`` to ``scores``. ``clean=None``: EAP
    at the clean run. Otherwise IG at ``alpha``: the input embeddings are interpolated, or with
    ``group`` only that group's output, ``source + alpha (clean - source)``, everything else clean."""
    state: dict = {"clean": clean, "diff": None, "outputs": {}}
    input_alpha = alpha if group is None or group[0] == g.INPUT_HOOK else 1.0

    def diff() -> Tensor:
        # [batch, pos, n_upstream, d_model]: source minus clean output of every upstream node
        if state["diff"] is None:
            cl = state["clean"] if state["clean"] is not None else g._split_outputs(model, index, state["outputs"])
            state["diff"] = torch.stack([(src[n] - cl[n]).expand_as(cl[n]) for n in index.upstream], dim=2)
        return state["diff"]

    def input_hook(x, hook):
        if state["clean"] is None:
            state["outputs"][hook.name] = x.detach()
            state["leaf"] = x.detach().requires_grad_(True)
        else:
            src_in = src[names.INPUT].to(x.dtype)
            interpolated = src_in + input_alpha * (state["clean"][names.INPUT] - src_in)
            state["leaf"] = interpolated.expand_as(x).detach().clone().requires_grad_(True)
        return state["leaf"]

    def record(x, hook):
        if state["clean"] is None:
            state["outputs"][hook.name] = x.detach()

    def slot_hook(x, hook, rows: slice, n_cols: int, squeeze: bool):
        def on_grad(grad):
            d = diff()[:, :, :n_cols]
            if squeeze:
                scores[rows, :n_cols] += torch.einsum("bpnd,bpd->n", d, grad.to(d.dtype))[None]
            else:
                scores[rows, :n_cols] += torch.einsum("bpnd,bphd->hn", d, grad.to(d.dtype))

        x.register_hook(on_grad)

    hooks: list = [(g.INPUT_HOOK, input_hook)]
    for layer in range(index.n_layers):
        n_heads_before = index.n_before_slot_layer(layer)
        for which, q in enumerate(names.QKV):
            base = layer * index.slots_per_layer + which * index.n_heads
            hooks.append((names.head_input_hook(layer, q), _bind(
                slot_hook, rows=slice(base, base + index.n_heads), n_cols=n_heads_before, squeeze=False)))
        hooks.append((g.result_hook(layer), record))
        if index.has_mlp:
            row = layer * index.slots_per_layer + 3 * index.n_heads
            hooks.append((g.mlp_in_hook(layer), _bind(
                slot_hook, rows=slice(row, row + 1), n_cols=index.n_before_slot_layer(layer, mlp=True), squeeze=True)))
            hooks.append((names.output_hook(names.mlp(layer)), record))
    last = len(index.slots) - 1
    hooks.append((g.final_resid_hook(model), _bind(
        slot_hook, rows=slice(last, last + 1), n_cols=len(index.upstream), squeeze=True)))
    if group is not None and group[0] != g.INPUT_HOOK:
        # Every reader sees the group as alpha * live + (1 - alpha) * source (its outgoing edges
        # ablated by 1 - alpha, as in graph.run_with_mask). The group's inputs are clean, so live
        # is the clean output: the value is clean + shift, and the gradient to the group's own
        # inputs is scaled by alpha.
        shift = (1 - alpha) * sum(src[n] - clean[n] for n in group[1])
        hooks.append((group[0], lambda x, hook: alpha * x + (1 - alpha) * x.detach() + shift.to(x.dtype)))
    with g.graph_mode(model), model.hooks(fwd_hooks=hooks), torch.enable_grad():
        logits = model(sub.clean)
        # Mean over ALL prompts, so per-batch gradients add up to the full-task gradient.
        metric = sub.per_prompt(logits).sum() / n_total
        torch.autograd.grad(metric, state["leaf"])


def _bind(fn, **kwargs):
    def hook(x, hook):
        return fn(x, hook, **kwargs)

    return hook


def _with_qk_fix(model, task, index: g.GraphIndex, matrix: Tensor, source: dict[str, Tensor],
                 batch_size: int | None, progress: bool) -> Tensor:
    """``matrix`` with its q and k rows rescored by AtP*'s QK fix (Kramar et al. 2024).

    A head's attention softmax saturates, so a gradient can miss most of what changing its query
    or key input does. Here, for each edge ``u -> head<q|k>``, the head's attention pattern is
    recomputed exactly (TransformerLens's own attention layer, on the clean inputs with only u's
    contribution to that q / k input ablated), and the pattern change is multiplied by
    ``dM/d pattern`` at the clean run. Shape: ``[n_slots, n_upstream]`` in and out.
    """
    if model.cfg.positional_embedding_type == "shortformer":
        raise ValueError("qk_fix does not support shortformer positional embeddings (added to q / k "
                         "inside the block); use qk_fix=False")
    out = matrix.clone()
    for layer in range(index.n_layers):
        base = layer * index.slots_per_layer
        out[base: base + 2 * index.n_heads] = 0.0
    for idx in tqdm(_batches(len(task), batch_size), disable=not progress, desc="QK fix"):
        sub = task.subset(idx.cpu())
        saved = _clean_run_for_qk_fix(model, index, sub, len(task))
        clean = g._split_outputs(model, index, saved)
        src = _rows(source, idx)
        diffs = torch.stack([(src[n] - clean[n]).expand_as(clean[n]) for n in index.upstream], dim=2)  # [b, p, n, d]
        with torch.no_grad(), g.graph_mode(model):
            for layer in range(index.n_layers):
                _qk_fix_layer(model, index, layer, saved, diffs, out)
    return out


def _clean_run_for_qk_fix(model, index: g.GraphIndex, sub, n_total: int) -> dict:
    """One clean forward + backward: node outputs, each layer's q / k / v inputs, its attention
    pattern (with ``.grad`` = dM/d pattern) and the attention mask its block received."""
    saved: dict = {}

    def keep(x, hook):
        saved[hook.name] = x.detach()

    def keep_pattern(x, hook):
        x.retain_grad()
        saved[hook.name] = x

    def block_inputs(module, args, kwargs, layer):
        saved[f"blocks.{layer}.attention_mask"] = kwargs.get("attention_mask")

    hooks: list = [(g.INPUT_HOOK, keep)]
    for layer in range(index.n_layers):
        hooks += [(names.head_input_hook(layer, x), keep) for x in names.QKV]
        hooks += [(g.result_hook(layer), keep), (f"blocks.{layer}.attn.hook_pattern", keep_pattern)]
        if index.has_mlp:
            hooks.append((names.output_hook(names.mlp(layer)), keep))
    handles = [model.blocks[layer].register_forward_pre_hook(_bind_pre(block_inputs, layer=layer), with_kwargs=True)
               for layer in range(index.n_layers)]
    try:
        with g.graph_mode(model), model.hooks(fwd_hooks=hooks), torch.enable_grad():
            logits = model(sub.clean)
            (sub.per_prompt(logits).sum() / n_total).backward()
    finally:
        for handle in handles:
            handle.remove()
    return saved


def _qk_fix_layer(model, index: g.GraphIndex, layer: int, saved: dict, diffs: Tensor, matrix: Tensor,
                  senders_per_run: int = 8) -> None:
    """Fill ``matrix``'s q and k rows of ``layer``: ``sum dM/d pattern * (pattern(u ablated) - pattern)``."""
    pattern = saved[f"blocks.{layer}.attn.hook_pattern"]
    grad = pattern.grad  # [b, H, q, k]
    mask = saved[f"blocks.{layer}.attention_mask"]
    block = model.blocks[layer]
    inputs = [saved[names.head_input_hook(layer, x)] for x in names.QKV]
    captured: dict = {}

    def grab(x, hook):
        captured["pattern"] = x

    n_cols = index.n_before_slot_layer(layer)
    post_norm = g._is_post_norm(model.cfg)  # post-norm blocks feed raw inputs to attention
    for which in (0, 1):  # q, k
        row = layer * index.slots_per_layer + which * index.n_heads
        for start in range(0, n_cols, senders_per_run):
            k = min(n_cols, start + senders_per_run) - start
            # one copy of the prompts per sender, its diff added to every head's q (or k) input:
            # a head's pattern depends on its own q / k input only, so heads do not interfere
            moved = [x.repeat(k, 1, 1, 1) for x in inputs]
            delta = diffs[:, :, start: start + k].permute(2, 0, 1, 3).reshape(-1, *diffs.shape[1:2], 1, diffs.shape[-1])
            moved[which] = moved[which] + delta.to(moved[which].dtype)
            q_in, k_in, v_in = moved if post_norm else [block.ln1(x) for x in moved]
            with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", grab)]):
                block.attn(query_input=q_in, key_input=k_in, value_input=v_in,
                           attention_mask=None if mask is None else mask.repeat(k, 1))
            change = captured["pattern"].reshape(k, *pattern.shape) - pattern.detach()[None]
            matrix[row: row + index.n_heads, start: start + k] += torch.einsum(
                "cbhqk,bhqk->hc", change, grad.to(change.dtype))


def _bind_pre(fn, **kwargs):
    def hook(module, args, kw):
        fn(module, args, kw, **kwargs)

    return hook


def _edge_scores(model, task, index, matrix: Tensor, method: str, level: str, **meta) -> Scores:
    if level == "edge":
        values = matrix.reshape(-1)[index.flat_edge_index().to(matrix.device)]
        labels = list(index.edges)
    else:
        values = matrix.sum(0)  # an upstream node's effect through all its outgoing edges
        labels = list(index.upstream)
    return Scores(values, labels, method, task.name, task.metric_name,
                  meta=_meta(model, index, level=level, **meta))


def _check_level(level: str) -> None:
    if level not in ("edge", "node"):
        raise ValueError(f"level must be 'edge' or 'node', got {level!r}")


def eap(
    model,
    task,
    ablation: str = "corrupted",
    level: Literal["edge", "node"] = "edge",
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    qk_fix: bool = False,
) -> Scores:
    """Edge attribution patching over every edge of the model's graph.

    score(u -> v) = ``(out_u_source - out_u_clean) . dM/d input_v`` summed over prompts'
    positions and averaged over prompts, with the gradient at the clean run. ``ablation``
    picks the source (:func:`graph.ablation_source`). ``level="node"`` sums each node's
    outgoing edges (labels ``input``, heads, MLPs). One forward + backward per prompt batch
    (``batch_size`` prompts; all by default). ``qk_fix``: score the edges into queries and keys
    by AtP*'s QK fix instead (exact attention-pattern change times dM/d pattern; one more
    forward + backward per batch and one attention-layer pass per sender).

    Returns Scores over ``names.all_edges`` for the model (``level="edge"``).
    """
    _check_level(level)
    task, index = _prepare(model, task, ablation, None, batch_size)
    source = g.ablation_source(model, task, ablation, seed=seed)
    matrix = _edge_matrix(model, task, index, source, None, batch_size, progress)
    if qk_fix:
        matrix = _with_qk_fix(model, task, index, matrix, source, batch_size, progress)
    return _edge_scores(model, task, index, matrix, "eap", level, ablation=ablation, qk_fix=qk_fix)


def eap_ig(
    model,
    task,
    steps: int = 5,
    ablation: str = "corrupted",
    level: Literal["edge", "node"] = "edge",
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    qk_fix: bool = False,
    interpolate: Literal["inputs", "activations"] = "inputs",
) -> Scores:
    """EAP with integrated gradients (Hanna et al. 2024).

    score(u -> v) = ``(out_u_source - out_u_clean) . (1/steps) sum_k dM/d input_v (x_k)`` where
    ``x_k = x_source + (k/steps)(x_clean - x_source)`` are interpolated input embeddings,
    ``k = 1..steps``. ``steps=1`` equals :func:`eap`. Completeness: the scores of all edges
    leaving ``input`` sum to about ``metric(source input) - metric(clean)``, closer as
    ``steps`` grows. ``steps * batches`` forward + backward passes (tqdm shows them).
    ``qk_fix``: as in :func:`eap`, q / k edges scored by AtP*'s QK fix.

    ``interpolate="activations"`` (after the EAP-IG authors' "EAP-IG-activations", their choice
    for mean and zero ablation, where no input embedding produces the ablated activations): the
    gradient is averaged over runs that each interpolate one group of node outputs (the input,
    one layer's heads, one MLP), everything else clean. Each run is the edge-mask state of
    :func:`graph.run_with_mask` with the group's outgoing edges ablated by ``1 - alpha``: readers
    see ``alpha * live + (1 - alpha) * source``, so gradients reach the group's own inputs
    scaled by ``alpha`` (the authors' code replaces the output by a constant, which stops them).
    ``n_groups`` times the passes (``1 + n_layers`` attention-only, ``1 + 2 n_layers`` otherwise);
    ``steps=1`` still equals :func:`eap`.
    """
    _check_level(level)
    if interpolate not in ("inputs", "activations"):
        raise ValueError(f"interpolate must be 'inputs' (the input embeddings) or 'activations' "
                         f"(each layer's outputs in turn), got {interpolate!r}")
    task, index = _prepare(model, task, ablation, steps, batch_size)
    source = g.ablation_source(model, task, ablation, seed=seed)
    matrix = _edge_matrix(model, task, index, source, steps, batch_size, progress, interpolate)
    if qk_fix:
        matrix = _with_qk_fix(model, task, index, matrix, source, batch_size, progress)
    return _edge_scores(model, task, index, matrix, "eap-ig", level, ablation=ablation, steps=steps, qk_fix=qk_fix,
                        interpolate=interpolate)


# --- exact edge patching ----------------------------------------------------------------------

def exact_edge_patching(
    model,
    task,
    edges: Iterable[str] | None = None,
    ablation: str = "corrupted",
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> Scores:
    """``metric(clean with the edge ablated) - metric(clean)`` for each edge, exactly.

    ``edges``: edge ids (all of :func:`graph.graph_edges` by default). Each forward pass runs
    ``max(1, batch_size // n_prompts)`` edges at once, each on its own copy of the prompts with
    its own edge mask. Unknown edge names raise ``ValueError`` before any run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    task, index = _prepare(model, task, ablation)
    edge_list = list(index.edges) if edges is None else ([edges] if isinstance(edges, str) else list(edges))
    if not edge_list:
        raise ValueError("no edges to patch; pass edge ids or edges=None for all of them")
    if len(set(edge_list)) != len(edge_list):
        raise ValueError("edges contains repeats; pass each edge once")
    device = g._device(model)
    cells = torch.tensor([index.cell(e) for e in edge_list], device=device)  # validates names first
    source = g.ablation_source(model, task, ablation, seed=seed)
    n = len(task)
    per_run = max(1, batch_size // n)
    values = torch.empty(len(edge_list))
    with torch.no_grad():
        clean_metric = task.score(model(task.clean))
        for start in tqdm(range(0, len(edge_list), per_run), disable=not progress, desc="exact edge patching"):
            chunk = cells[start:start + per_run]
            k = len(chunk)
            masks = torch.zeros((k, *index.shape), device=device)
            masks[torch.arange(k, device=device), chunk[:, 0], chunk[:, 1]] = 1.0
            masks = masks.repeat_interleave(n, 0)  # [k * n, slots, upstream]: edge-major
            src = {key: v if v.shape[0] == 1 else v.repeat(k, 1, 1) for key, v in source.items()}
            repeated = task.subset(torch.arange(n).repeat(k))
            logits = g.run_with_mask(model, task.clean.repeat(k, 1), masks, src)
            per_prompt = repeated.per_prompt(logits).reshape(k, n).mean(1)
            values[start:start + k] = (per_prompt - clean_metric).cpu()
    return Scores(values, edge_list, "exact-edge-patching", task.name, task.metric_name,
                  meta=_meta(model, index, level="edge", ablation=ablation, clean_metric=float(clean_metric)))


# --- node-level attribution patching ----------------------------------------------------------

def _target_hooks(index: g.GraphIndex, target: str) -> list[tuple[str, str, int | None]]:
    """(hook name, kind, layer) for a target; kind says how to label its axes."""
    if target not in ATTRIBUTION_TARGETS:
        raise ValueError(f"unknown attribution target {target!r}; choose one of {ATTRIBUTION_TARGETS}")
    if target in ("mlp_out", "resid_mid") and not index.has_mlp:
        raise ValueError(f"target {target!r} needs MLPs but the model is attention-only; use 'head_out' or 'resid_pre'")
    out: list[tuple[str, str, int | None]] = []
    if target == "nodes":
        out.append((g.INPUT_HOOK, "input", None))
    for layer in range(index.n_layers):
        if target in ("head_out", "nodes"):
            out.append((g.result_hook(layer), "heads", layer))
        elif target in ("z", "q", "k", "v"):
            out.append((f"blocks.{layer}.attn.hook_{target}", "heads", layer))
        elif target == "pattern":
            out.append((f"blocks.{layer}.attn.hook_pattern", "pattern", layer))
        elif target in SITE_TARGETS:
            out.append((f"blocks.{layer}.hook_{target}", target, layer))
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
) -> Scores:
    """First-order estimate of patching each activation from the corrupted run into the clean run.

    score = ``sum (corrupted_act - clean_act) * dM/d act`` (gradient at the clean run; summed
    over the activation's feature axis and positions, averaged over prompts). ``target``:
    ``"head_out"`` (per head; computed at ``hook_z``, which is exact since ``W_O`` is linear),
    ``"mlp_out"``, ``"nodes"`` (input, heads, MLPs),
    ``"z"``, ``"q"``, ``"k"``, ``"v"`` (per head), ``"pattern"`` (per head; positions are query
    positions), or a whole-layer site ``"resid_pre"``, ``"attn_out"``, ``"resid_mid"``,
    ``"resid_post"`` (labels ``resid_pre.2``). ``by_pos`` keeps positions: labels ``a1.h0@3``. One forward + backward on the
    clean prompts and one forward on the corrupted prompts per batch.
    """
    task, index = _prepare(model, task, None, None, batch_size)
    hooks = _target_hooks(index, target)
    hook_names = {h for h, _, _ in hooks}
    n_total = len(task)
    totals: dict[str, Tensor] = {}
    batches = _batches(n_total, batch_size)
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
    return Scores(torch.tensor(values), labels, "attribution-patching", task.name, task.metric_name,
                  meta=_meta(model, index, target=target, by_pos=by_pos))


def _attribution_batch(model, sub, hook_names: set[str], n_total: int) -> dict[str, Tensor]:
    """Per hook: ``sum over batch and features of (corrupted - clean) * grad``, ``[pos, ...]``."""
    with g.graph_mode(model), torch.no_grad():
        _, corrupted = model.run_with_cache(sub.corrupted, names_filter=lambda n: n in hook_names)
    grads: dict[str, Tensor] = {}
    clean: dict[str, Tensor] = {}
    leaf: list[Tensor] = []

    def save(x, hook):
        clean[hook.name] = x.detach()
        x.register_hook(lambda grad, name=hook.name: grads.__setitem__(name, grad))

    def make_leaf(x, hook):
        leaf.append(x.detach().requires_grad_(True))
        return leaf[0]

    fwd = [(g.INPUT_HOOK, make_leaf)] + [(h, save) for h in sorted(hook_names)]
    with g.graph_mode(model), model.hooks(fwd_hooks=fwd), torch.enable_grad():
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
