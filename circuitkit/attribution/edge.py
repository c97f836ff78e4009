"""Edge attribution patching: EAP (Syed et al. 2023) and EAP-IG (Hanna et al. 2024), with AtP*'s
QK fix (Kramar et al. 2024).

Sign convention (shared by every method of `circuitkit.attribution`, so their scores are
directly comparable): a score estimates ``metric(clean run with the component / edge ablated) -
metric(clean run)``. With ``logit_diff`` the components a behaviour relies on get negative scores;
rank by ``abs`` (``Scores.top`` does) when the direction does not matter.

* `eap`: for the edge ``u -> v``, ``(out_u_source - out_u_clean) . dM/d input_v`` with
  gradients at v's input (a head's q/k/v input, an MLP's input, the final residual) from one
  forward + backward pass.
* `eap_ig`: the same difference times the gradient at ``input_v`` averaged over runs whose
  input embeddings are interpolated from the source to the clean ones, ``alpha = k / steps`` for
  ``k = 1..steps`` (``steps=1`` is EAP).
* ``qk_fix=True`` (either of the two): for edges into queries and keys, the exact change of the
  head's attention pattern times dM/d pattern.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit.errors import InputError

try:  # HookedTransformer's norms (TransformerLens 4 has none: a bridge's norms take the autograd path)
    from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre
    _LAYER_NORMS, _RMS_NORMS = (LayerNorm, LayerNormPre), (RMSNorm, RMSNormPre)
except ImportError:
    _LAYER_NORMS, _RMS_NORMS = (), ()

from circuitkit import names
from circuitkit.ablation.edges import (
    INPUT_HOOK,
    GraphIndex,
    attn_output_norm,
    attn_pre_norm_sum,
    batch_source,
    final_resid_hook,
    graph_mode,
    head_results,
    is_post_norm,
    mlp_in_hook,
    model_device,
    node_outputs,
    post_norm_head_diffs,
    result_hook,
    split_outputs,
    whole_vector_qk_norm,
)
from circuitkit.ablation.kinds import DEFAULT_ABLATION
from circuitkit.attribution.common import (
    RECOMPUTE_BYTES,
    budget_batch_size,
    check_nonzero_scores,
    check_position_memory,
    memory_budget,
    prepare_attribution,
    prompt_batches,
    rows_of,
    scores_meta,
    stream_mode,
)
from circuitkit.attribution.mask import mask_ig_matrix
from circuitkit.models import backend
from circuitkit.scores import Scores

# EAP-IG's integration paths (see eap_ig)
INTERPOLATIONS = ("inputs", "activations", "mask")

# --- EAP and EAP-IG ---------------------------------------------------------------------------

def _edge_matrix(
    model,
    task,
    index: GraphIndex,
    source,
    steps: int | None,
    batch_size: int | None,
    progress: bool,
    interpolate: str = "inputs",
    by_pos: bool = False,
) -> Tensor:
    """``[n_slots, n_upstream]`` scores: ``sum (out_source - out_clean) . mean_alpha dM/d input_v``
    (``by_pos``: ``[n_pos, n_slots, n_upstream]``, the sum over prompts at each position apart).

    ``source``: node outputs of every prompt (`ablation_source`)
    or ``idx -> those of prompts idx`` (`batch_source`).
    ``steps=None``: plain EAP, one forward + backward per prompt batch at the clean run, with
    the clean outputs recorded in that same forward pass. Otherwise integrated gradients over
    ``steps`` points: the input embeddings are interpolated (``interpolate="inputs"``), or, one
    group at a time, the outputs of the input, each layer's heads and each MLP
    (``"activations"``; the gradients of all the groups' runs are averaged).
    """
    n_total = len(task)
    shape = (task.clean.shape[1], *index.shape) if by_pos else index.shape
    scores = torch.zeros(shape, device=model_device(model))
    batches = prompt_batches(n_total, batch_size)
    source_of = rows_of(source)
    alphas = [1.0] if steps is None else [k / steps for k in range(1, steps + 1)]
    groups = output_groups(index) if steps is not None and interpolate == "activations" else [None]
    bar = tqdm(total=len(batches) * len(alphas) * len(groups), disable=not progress,
               desc="EAP" if steps is None else f"EAP-IG ({steps} steps, {interpolate})")
    for idx in batches:
        sub = task.subset(idx.cpu())
        stack = _stack(index, source_of(idx), sub.clean.shape)
        clean_input = None
        if steps is not None:  # IG runs are not at the clean point: the clean outputs from their own pass
            clean = node_outputs(model, sub.clean)
            stack -= _stack(index, clean, sub.clean.shape)
            clean_input = clean[names.INPUT]
            del clean
        for group in groups:
            for alpha in alphas:
                _edge_grad_run(model, sub, index, stack, clean_input, alpha, n_total, scores, group)
                bar.update()
        del stack
    bar.close()
    return scores / (len(alphas) * len(groups))


def _stack(index: GraphIndex, outputs: dict[str, Tensor], shape: torch.Size) -> Tensor:
    """``[n_upstream, batch * pos, d_model]``: the nodes' outputs, one contiguous row block per
    node (rows shared by all prompts, as a mean's, are repeated)."""
    b, p = shape[0], shape[1]
    first = outputs[index.upstream[0]]
    out = torch.empty((len(index.upstream), b, p, first.shape[-1]), dtype=first.dtype, device=first.device)
    for j, node in enumerate(index.upstream):
        out[j] = outputs[node]
    return out.reshape(len(index.upstream), b * p, -1)


def output_groups(index: GraphIndex) -> list[tuple[str, list[str]]]:
    """``(hook, nodes)``: where each group's summed output enters the residual stream."""
    groups = [(INPUT_HOOK, [names.INPUT])]
    for layer in range(index.n_layers):
        groups.append((names.hook("attn_out", layer), [names.head(layer, h) for h in range(index.n_heads)]))
        if index.has_mlp:
            groups.append((names.output_hook(names.mlp(layer)), [names.mlp(layer)]))
    return groups


def accumulate_edge_grads(model, sub, index, src, clean, alpha, n_total, scores,
                           group: tuple[str, list[str]] | None = None) -> None:
    """Add one run's ``(out_source - out_clean) . dM/d input_v`` to ``scores``. ``clean=None``: EAP
    at the clean run. Otherwise IG at ``alpha``: the input embeddings are interpolated, or with
    ``group`` only that group's output, ``source + alpha (clean - source)``, everything else clean.
    ``src`` / ``clean``: node id -> ``[batch or 1, pos, d_model]``."""
    stack = _stack(index, src, sub.clean.shape)
    if clean is not None:
        stack -= _stack(index, clean, sub.clean.shape)
    _edge_grad_run(model, sub, index, stack, None if clean is None else clean[names.INPUT], alpha, n_total,
                   scores, group)


def _edge_grad_run(model, sub, index: GraphIndex, stack: Tensor, clean_input: Tensor | None, alpha: float,
                   n_total: int, scores: Tensor, group: tuple[str, list[str]] | None = None) -> None:
    """One forward + backward adding its scores to ``scores`` as the gradients arrive
    (``scores``: ``[n_slots, n_upstream]``, or ``[n_pos, n_slots, n_upstream]`` to keep each
    position's products apart).

    ``clean_input=None`` (EAP): ``stack`` holds the source outputs ``[n_upstream, rows, d_model]``
    (``rows = batch * pos``) and becomes the differences in place once the run has recorded the
    clean outputs. Otherwise ``stack`` is ``source - clean`` and the run is IG's at ``alpha``.
    Each receiver's gradient is contracted with the differences when the backward pass reaches
    it and then dropped: a head's q / k / v input gradient from ``dM/d hook_q`` (``W_Q`` and the
    layer norm's backward, a few thousand rows at a time), an MLP's or the final residual's as it is.
    """
    at_clean = clean_input is None
    b, p = sub.clean.shape[0], sub.clean.shape[1]
    by_pos = scores.ndim == 3
    state: dict = {"diff": None, "outputs": {}, "pre": {}, "z": {}, "resid": {}}
    input_alpha = alpha if group is None or group[0] == INPUT_HOOK else 1.0
    post_norm_layers = [layer for layer in range(index.n_layers) if attn_output_norm(model, layer) is not None]
    raw_input_norm = is_post_norm(model)  # post-norm blocks feed the raw residual to attention
    bridge = backend.is_bridge(model)

    def head_cols(layer: int) -> slice:
        return slice(1 + layer * index.block, 1 + layer * index.block + index.n_heads)

    def diff() -> Tensor:
        # [n_upstream, rows, d_model]: source minus clean output of every upstream node
        if state["diff"] is not None:
            return state["diff"]
        d = stack
        if at_clean:
            out = state["outputs"]
            d[0] -= out[INPUT_HOOK].reshape(b * p, -1).to(d.dtype)
            for layer in range(index.n_layers):
                res = head_results(model, layer, out[result_hook(layer)])  # [b, p, h, d]
                d[head_cols(layer)] -= res.permute(2, 0, 1, 3).reshape(index.n_heads, b * p, -1).to(d.dtype)
                if index.has_mlp:
                    col = 1 + layer * index.block + index.n_heads
                    d[col] -= out[names.output_hook(names.mlp(layer))].reshape(b * p, -1).to(d.dtype)
            state["outputs"] = {}
        elif post_norm_layers:
            d = d.clone()  # the run's own linearisation of each post-norm layer, not the shared raw difference
        for layer in post_norm_layers:  # a head reaches readers through its layer's norm: J_N diff
            cols = head_cols(layer)
            heads = d[cols].reshape(index.n_heads, b, p, -1).permute(1, 2, 0, 3)
            moved = post_norm_head_diffs(model, layer, state["pre"][layer], heads, linear=True)
            d[cols] = moved.permute(2, 0, 1, 3).reshape(index.n_heads, b * p, -1).to(d.dtype)
        state["diff"] = d
        return d

    def input_hook(x, hook):
        if at_clean:
            state["outputs"][INPUT_HOOK] = x.detach()
            state["leaf"] = x.detach().requires_grad_(True)
        else:
            shift = (1 - input_alpha) * stack[0].reshape(b, p, -1)
            state["leaf"] = (clean_input.to(x.dtype) + shift.to(x.dtype)).expand_as(x).detach().clone().requires_grad_(True)
        state["resid"][0] = state["leaf"].detach()
        return state["leaf"]

    def record_resid(x, hook, layer: int):
        state["resid"][layer] = x.detach()

    def record(x, hook, name: str):  # by name: a bridge's hook point carries its own name, not the alias
        if at_clean:
            state["outputs"][name] = x.detach()

    def record_z(x, hook, layer: int):
        record(x, hook, result_hook(layer))
        if layer in post_norm_layers:  # where the layer's norm is linearised: the run's own sum
            state["z"][layer] = x
            state["pre"][layer] = attn_pre_norm_sum(model, layer, head_results(model, layer, x.detach()))

    def head_grad(grad: Tensor, layer: int, which: int) -> None:
        d = diff()
        n_cols = index.n_before_slot_layer(layer)
        row = layer * index.slots_per_layer + which * index.n_heads
        block = model.blocks[layer]
        norm = None if raw_input_norm else backend.attention_input_norm(model, layer)
        kind = _norm_kind(norm)
        w = (block.attn.W_Q, block.attn.W_K, block.attn.W_V)[which].detach().to(d.dtype)  # [h, d_model, d_head]
        if kind in ("ln", "rms") and hasattr(norm, "w"):  # the norm's weight folded into the projection
            w = w * norm.w.detach().to(d.dtype)[None, :, None]
        g = grad.reshape(b * p, index.n_heads, -1).to(d.dtype)
        x = state["resid"][layer].reshape(b * p, -1)
        n_heads, d_model = w.shape[0], w.shape[1]
        step = max(1, RECOMPUTE_BYTES // (n_heads * d_model * d.element_size()))
        total = torch.zeros((p, n_heads, n_cols) if by_pos else (n_heads, n_cols), dtype=d.dtype, device=d.device)
        for r0 in range(0, b * p, step):
            r1 = min(b * p, r0 + step)
            g_in = torch.einsum("rhe,hde->hrd", g[r0:r1], w)  # dM/d (normalised) split input, head-major
            if kind in ("ln", "rms"):
                _norm_backward_(g_in, x[r0:r1].to(d.dtype), norm.eps, centred=kind == "ln")
            elif kind == "generic":
                with torch.enable_grad():
                    x_rep = x[r0:r1].detach()[None].expand(n_heads, -1, -1).requires_grad_(True)
                    (g_in,) = torch.autograd.grad(norm(x_rep), x_rep, g_in)
            if by_pos:  # rows are (prompt, position) pairs, prompt-major: row r is position r % p
                per_row = torch.einsum("hrd,crd->rhc", g_in, d[:n_cols, r0:r1])
                total.index_add_(0, torch.arange(r0, r1, device=d.device) % p, per_row)
            else:
                total += g_in.reshape(n_heads, -1) @ d[:n_cols, r0:r1].reshape(n_cols, -1).T
        scores[..., row: row + n_heads, :n_cols] += total.to(scores.dtype)

    def vector_grad(grad: Tensor, row: int, n_cols: int) -> None:
        d = diff()
        if by_pos:
            per_row = torch.einsum("crd,rd->rc", d[:n_cols], grad.reshape(b * p, -1).to(d.dtype))
            scores[:, row, :n_cols] += per_row.reshape(b, p, n_cols).sum(0).to(scores.dtype)
        else:
            scores[row, :n_cols] += (d[:n_cols].reshape(n_cols, -1) @ grad.reshape(-1).to(d.dtype)).to(scores.dtype)

    def watch(fn, branch: bool = False, **kwargs):
        # branch: a bridge fires hook_mlp_in on the residual tensor itself (HookedTransformer on a
        # copy), so the MLP's own input gradient is taken on a copy that feeds the MLP alone
        def hook(x, hook):
            if x.requires_grad:
                if branch and bridge:
                    x = x.clone()
                x.register_hook(lambda grad: fn(grad, **kwargs))
                return x

        return hook

    hooks: list = [(INPUT_HOOK, input_hook)]
    for layer in range(index.n_layers):
        if layer > 0:
            hooks.append((names.hook("resid_pre", layer), _bind(record_resid, layer=layer)))
        for which, q in enumerate(names.QKV):
            hooks.append((names.hook(q, layer), watch(head_grad, layer=layer, which=which)))
        hooks.append((result_hook(layer), _bind(record_z, layer=layer)))
        if index.has_mlp:
            row = layer * index.slots_per_layer + 3 * index.n_heads
            hooks.append((mlp_in_hook(layer), watch(vector_grad, branch=True, row=row,
                                                    n_cols=index.n_before_slot_layer(layer, mlp=True))))
            out_hook = names.output_hook(names.mlp(layer))
            hooks.append((out_hook, _bind(record, name=out_hook)))
    hooks.append((final_resid_hook(model), watch(vector_grad, row=len(index.slots) - 1, n_cols=len(index.upstream))))
    if group is not None and group[0] != INPUT_HOOK:
        # Every reader sees the group as alpha * live + (1 - alpha) * source (its outgoing edges
        # ablated by 1 - alpha, as in graph.run_with_mask). The group's inputs are clean, so live
        # is the clean output: the value is clean + shift, and the gradient to the group's own
        # inputs is scaled by alpha.
        cols = [index.upstream_index(n) for n in group[1]]
        group_diff = stack[cols].sum(0).reshape(b, p, -1)  # sum of source - clean over the group
        first = names.parse_node(group[1][0])
        if first.kind == "head" and first.layer in post_norm_layers:
            hooks.append((group[0], _post_norm_interpolation(model, first.layer, group_diff, alpha, state)))
        else:
            shift = (1 - alpha) * group_diff
            hooks.append((group[0], lambda x, hook: alpha * x + (1 - alpha) * x.detach() + shift.to(x.dtype)))
    with stream_mode(model), model.hooks(fwd_hooks=hooks), torch.enable_grad():
        logits = model(sub.clean)
        # Mean over ALL prompts, so per-batch gradients add up to the full-task gradient.
        metric = sub.per_prompt(logits).sum() / n_total
        del logits
        torch.autograd.grad(metric, state["leaf"])


def _norm_kind(norm) -> str:
    """How a head's input gradient passes its layer norm: ``"none"`` (no norm before attention),
    ``"ln"`` / ``"rms"`` (TransformerLens's LayerNorm / RMSNorm, with or without weights: in
    closed form), ``"generic"`` (any other module: autograd)."""
    if norm is None or isinstance(norm, torch.nn.Identity):
        return "none"
    if type(norm) in _LAYER_NORMS:
        return "ln"
    if type(norm) in _RMS_NORMS:
        return "rms"
    return "generic"


def _norm_backward_(grad: Tensor, x: Tensor, eps: float, centred: bool) -> None:
    """In place: ``grad`` (``[heads, rows, d]``, at a LayerNorm's (``centred``) or RMSNorm's
    normalised output, weight already applied) becomes the gradient at its input ``x`` (``[rows,
    d]``, shared by every head): ``(g - mean g - x_hat mean(g x_hat)) / scale``."""
    if centred:
        x = x - x.mean(-1, keepdim=True)
    inv_scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # [rows, 1]
    x_hat = x * inv_scale
    along = torch.einsum("hrd,rd->hr", grad, x_hat) / x.shape[-1]
    if centred:
        grad -= grad.mean(-1, keepdim=True)
    grad.addcmul_(x_hat[None], along[..., None], value=-1.0)
    grad.mul_(inv_scale[None])


def _post_norm_interpolation(model, layer: int, group_diff: Tensor, alpha: float, state: dict):
    """The hook at a post-norm layer's ``hook_attn_out`` for one activation-IG run: readers see
    ``N(alpha * pre + (1 - alpha) * pre_source)``, the edge-mask state with the heads' outgoing
    edges ablated by ``1 - alpha`` (gradients reach the heads' inputs scaled by ``alpha``), and the
    layer's norm is linearised there. The heads' inputs are clean, so ``pre_source`` is the live
    sum plus ``group_diff`` (the heads' summed ``source - clean``)."""
    norm = attn_output_norm(model, layer)

    def hook(x, hook):
        live_pre = attn_pre_norm_sum(model, layer, head_results(model, layer, state["z"][layer]))
        source_pre = live_pre.detach() + group_diff.to(live_pre.dtype)
        point = alpha * live_pre + (1 - alpha) * source_pre
        state["pre"][layer] = point.detach()
        return norm(point).to(x.dtype)

    return hook


def _bind(fn, **kwargs):
    def hook(x, hook):
        return fn(x, hook, **kwargs)

    return hook


def _check_qk_fix(model) -> None:
    """``ValueError`` before any work where the QK fix cannot run: shortformer positions (added to q /
    k inside the block), or a bridge without per-head split inputs (the fix moves one head's query or
    key input and reads its pattern)."""
    if model.cfg.positional_embedding_type == "shortformer":
        raise InputError("qk_fix does not support shortformer positional embeddings (added to q / k "
                         "inside the block); use qk_fix=False")
    backend.require(model, ("split_inputs",), "qk_fix (AtP*'s QK fix; qk_fix=False scores q / k edges by gradient)")


def _with_qk_fix(model, task, index: GraphIndex, matrix: Tensor, source,
                 batch_size: int | None, progress: bool) -> Tensor:
    """``matrix`` with its q and k rows rescored by AtP*'s QK fix (Kramar et al. 2024).

    A head's attention softmax saturates, so a gradient can miss most of what changing its query
    or key input does. Here, for each edge ``u -> head<q|k>``, the head's attention pattern is
    recomputed exactly (TransformerLens's own attention layer, on the clean inputs with only u's
    contribution to that q / k input ablated), and the pattern change is multiplied by
    ``dM/d pattern`` at the clean run. Shape: ``[n_slots, n_upstream]`` in and out, or
    position-resolved ``[n_pos, n_slots, n_upstream]`` (an edge into a query at ``p`` changes the
    pattern's row ``p`` only; one into a key at ``p`` is re-run with that key position alone
    moved, ``n_pos`` times the key runs). ``source``: as in `_edge_matrix`.
    """
    out = matrix.clone()
    for layer in range(index.n_layers):
        base = layer * index.slots_per_layer
        out[..., base: base + 2 * index.n_heads, :] = 0.0
    source_of = rows_of(source)
    for idx in tqdm(prompt_batches(len(task), batch_size), disable=not progress, desc="QK fix"):
        sub = task.subset(idx.cpu())
        saved = _clean_run_for_qk_fix(model, index, sub, len(task))
        clean = split_outputs(model, index, saved)
        src = source_of(idx)
        diffs = torch.stack([(src[n] - clean[n]).expand_as(clean[n]) for n in index.upstream], dim=2)  # [b, p, n, d]
        for layer in range(index.n_layers):  # post-norm layers: the exact change a head's ablation makes
            if attn_output_norm(model, layer) is not None:
                cols = slice(1 + layer * index.block, 1 + layer * index.block + index.n_heads)
                pre = attn_pre_norm_sum(model, layer, head_results(model, layer, saved[result_hook(layer)]))
                diffs[:, :, cols] = post_norm_head_diffs(model, layer, pre, diffs[:, :, cols], linear=False)
        with torch.no_grad(), graph_mode(model):
            for layer in range(index.n_layers):
                _qk_fix_layer(model, index, layer, saved, diffs, out, tokens=sub.clean)
    return out


def _clean_run_for_qk_fix(model, index: GraphIndex, sub, n_total: int) -> dict:
    """One clean forward + backward: node outputs, each layer's q / k / v inputs, its attention
    pattern (with ``.grad`` = dM/d pattern) and the attention mask its block received."""
    saved: dict = {}

    def keep(name: str, grad: bool = False):  # by name: a bridge's hook point carries its own name
        def hook(x, hook):
            if grad:
                x.retain_grad()
            saved[name] = x if grad else x.detach()
        return hook

    def block_inputs(module, args, kwargs, layer):
        saved[("attention_mask", layer)] = kwargs.get("attention_mask")

    wanted = [INPUT_HOOK]
    for layer in range(index.n_layers):
        wanted += [names.head_input_hook(layer, x) for x in names.QKV] + [result_hook(layer)]
        if index.has_mlp:
            wanted.append(names.output_hook(names.mlp(layer)))
    hooks: list = [(name, keep(name)) for name in wanted]
    hooks += [(names.hook("pattern", layer), keep(names.hook("pattern", layer), grad=True))
              for layer in range(index.n_layers)]
    handles = [model.blocks[layer].register_forward_pre_hook(_bind_pre(block_inputs, layer=layer), with_kwargs=True)
               for layer in range(index.n_layers)]
    try:
        with graph_mode(model), model.hooks(fwd_hooks=hooks), torch.enable_grad():
            logits = model(sub.clean)
            (sub.per_prompt(logits).sum() / n_total).backward()
    finally:
        for handle in handles:
            handle.remove()
    return saved


def _qk_fix_layer(model, index: GraphIndex, layer: int, saved: dict, diffs: Tensor, matrix: Tensor,
                  tokens: Tensor, senders_per_run: int = 8) -> None:
    """Fill ``matrix``'s q and k rows of ``layer``: ``sum dM/d pattern * (pattern(u ablated) - pattern)``
    (a ``[n_pos, n_slots, n_upstream]`` matrix: per query position for q, per key position for k).

    A ``HookedTransformer``'s attention layer is run alone on the moved inputs; a bridge's attention
    is the Hugging Face family's, so the model runs ``tokens`` up to the layer's pattern with the
    moved split input in place."""
    pattern = saved[names.hook("pattern", layer)]
    grad = pattern.grad  # [b, H, q, k]
    mask = saved[("attention_mask", layer)]
    block = model.blocks[layer]
    inputs = [saved[names.head_input_hook(layer, x)] for x in names.QKV]
    captured: dict = {}

    def grab(x, hook):
        captured["pattern"] = x

    n_cols = index.n_before_slot_layer(layer)
    post_norm = is_post_norm(model)  # post-norm blocks feed raw inputs to attention
    # A head's pattern depends on its own q / k input only, so one run can move every head's input
    # at once; where the QK-norm spans all heads (OLMo-2), each head is moved in a run of its own.
    apart = list(range(index.n_heads)) if whole_vector_qk_norm(model) else [None]
    by_pos = matrix.ndim == 3
    n_pos = pattern.shape[-1]
    for which in (0, 1):  # q, k
        row = layer * index.slots_per_layer + which * index.n_heads
        # by_pos keys: one key position moved per run (a pattern row mixes every key position)
        key_positions = range(n_pos) if by_pos and which == 1 else [None]
        for start in range(0, n_cols, senders_per_run):
            k = min(n_cols, start + senders_per_run) - start
            # one copy of the prompts per sender, its diff added to the heads' q (or k) input
            delta = diffs[:, :, start: start + k].permute(2, 0, 1, 3).reshape(-1, *diffs.shape[1:2], 1, diffs.shape[-1])
            for head, at in itertools.product(apart, key_positions):
                moved = [x.repeat(k, 1, 1, 1) for x in inputs]
                heads = slice(None) if head is None else slice(head, head + 1)
                where = slice(None) if at is None else slice(at, at + 1)
                moved[which][:, where, heads] = moved[which][:, where, heads] + delta[:, where].to(moved[which].dtype)
                if backend.is_bridge(model):
                    captured["pattern"] = backend.value_at(
                        model, tokens.repeat(k, 1), names.hook("pattern", layer),
                        [(names.head_input_hook(layer, names.QKV[which]), lambda x, hook, m=moved[which]: m)])
                else:
                    q_in, k_in, v_in = moved if post_norm else [block.ln1(x) for x in moved]
                    with model.hooks(fwd_hooks=[(names.hook("pattern", layer), grab)]):
                        block.attn(query_input=q_in, key_input=k_in, value_input=v_in,
                                   attention_mask=None if mask is None else mask.repeat(k, 1))
                change = (captured["pattern"].reshape(k, *pattern.shape) - pattern.detach()[None])[:, :, heads]
                rows = slice(row, row + index.n_heads) if head is None else slice(row + head, row + head + 1)
                g = grad[:, heads].to(change.dtype)
                if not by_pos:
                    matrix[rows, start: start + k] += torch.einsum("cbhqk,bhqk->hc", change, g)
                elif at is None:  # queries: a query position's edge moves its own pattern row only
                    matrix[:, rows, start: start + k] += torch.einsum("cbhqk,bhqk->qhc", change, g)
                else:
                    matrix[at, rows, start: start + k] += torch.einsum("cbhqk,bhqk->hc", change, g)


def _bind_pre(fn, **kwargs):
    def hook(module, args, kw):
        fn(module, args, kw, **kwargs)

    return hook


def _edge_scores(model, task, index, matrix: Tensor, method: str, level: str, **meta) -> Scores:
    """Labelled scores of a ``[n_slots, n_upstream]`` matrix, or of a position-resolved
    ``[n_pos, n_slots, n_upstream]`` one (labels ``a0.h0@3->a1.h0@3<k>`` / ``a0.h0@3``, position-major)."""
    by_pos = matrix.ndim == 3
    n_pos = matrix.shape[0] if by_pos else None
    if level == "edge":
        flat = index.flat_edge_index().to(matrix.device)
        values = matrix.reshape(n_pos, -1)[:, flat] if by_pos else matrix.reshape(-1)[flat]
        labels = index.position_edges(n_pos) if by_pos else list(index.edges)
    else:
        values = matrix.sum(-2)  # an upstream node's effect through all its outgoing edges
        labels = ([names.with_pos(n, pos) for pos in range(n_pos) for n in index.upstream] if by_pos
                  else list(index.upstream))
    return Scores(values, labels, method, task.name, task.metric_name,
                  meta=scores_meta(model, index, level=level, by_pos=by_pos, **meta))


def _check_level(level: str) -> None:
    if level not in ("edge", "node"):
        raise InputError(f"level must be 'edge' or 'node', got {level!r}")


def eap(
    model,
    task,
    ablation: str = DEFAULT_ABLATION,
    level: Literal["edge", "node"] = "edge",
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    qk_fix: bool = False,
    max_memory: float | None = None,
    by_pos: bool = False,
    source: dict[str, Tensor] | None = None,
) -> Scores:
    """Edge attribution patching over every edge of the model's graph.

    score(u -> v) = ``(out_u_source - out_u_clean) . dM/d input_v`` summed over prompts'
    positions and averaged over prompts, with the gradient at the clean run. ``ablation``
    picks the source (`ablation_source`). ``level="node"`` sums each node's
    outgoing edges (labels ``input``, heads, MLPs). One forward + backward per prompt batch
    (``batch_size`` prompts; all by default). ``qk_fix``: score the edges into queries and keys
    by AtP*'s QK fix instead (exact attention-pattern change times dM/d pattern; one more
    forward + backward per batch and one attention-layer pass per sender).

    Memory: each receiver's gradient is contracted with the sender differences as the backward
    pass reaches it, so a batch holds one forward + backward pass and one ``[n_upstream, batch,
    pos, d_model]`` block of differences. Batches get fewer prompts than ``batch_size`` where
    ``max_memory`` (bytes; by default half the memory available at the call) holds fewer
    (`memory_per_prompt`); ``ValueError`` before any work
    when not even one prompt fits.

    ``by_pos``: position-resolved scores, one per edge and token position, labelled
    ``a0.h0@3->a1.h0@3<k>`` (`circuitkit.names.edge_at`; ``level="node"``: ``a0.h0@3``), in
    position-major order: the same products kept apart by position, so summed over positions
    they are the ``by_pos=False`` scores. The ``[n_pos, n_slots, n_upstream]`` matrices come
    out of the memory budget (``ValueError`` before any work when they alone do not fit).
    With ``qk_fix``, an edge into a query at ``p`` moves that pattern row alone; an edge into a
    key at ``p`` is re-run with only that key position moved (``n_pos`` times the key runs).

    ``source``: the ablation source already computed for this task and ``ablation``
    (``ablation_source``, e.g. a discovery's prepared context); computed batch by batch otherwise.

    Returns Scores over ``names.all_edges`` for the model (``level="edge"``).

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> scores = ck.eap(model, task, progress=False)
        >>> len(scores), scores.is_edge
        (81, True)
        >>> sorted(label for label, _ in scores.top(2))
        ['a1.h0->logits', 'input->a1.h0<v>']
    """
    _check_level(level)
    task, index = prepare_attribution(model, task, ablation, None, batch_size)
    if qk_fix:
        _check_qk_fix(model)
    size = budget_batch_size(model, index, task, "eap", batch_size, max_memory, by_pos)
    qk_size = budget_batch_size(model, index, task, "qk_fix", batch_size, max_memory) if qk_fix else size
    source = batch_source(model, task, ablation, seed, size) if source is None else rows_of(source)
    matrix = _edge_matrix(model, task, index, source, None, size, progress, by_pos=by_pos)
    if qk_fix:
        matrix = _with_qk_fix(model, task, index, matrix, source, qk_size, progress)
    check_nonzero_scores(model, task, matrix, "eap")
    return _edge_scores(model, task, index, matrix, "eap", level, ablation=ablation, qk_fix=qk_fix)


def eap_ig(
    model,
    task,
    steps: int = 5,
    ablation: str = DEFAULT_ABLATION,
    level: Literal["edge", "node"] = "edge",
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    qk_fix: bool = False,
    interpolate: Literal["inputs", "activations", "mask"] = "inputs",
    max_memory: float | None = None,
    by_pos: bool = False,
    source: dict[str, Tensor] | None = None,
) -> Scores:
    """EAP with integrated gradients (Hanna et al. 2024).

    score(u -> v) = ``(out_u_source - out_u_clean) . (1/steps) sum_k dM/d input_v (x_k)`` where
    ``x_k = x_source + (k/steps)(x_clean - x_source)`` are interpolated input embeddings,
    ``k = 1..steps``. ``steps=1`` equals `eap`. Completeness: the scores of all edges
    leaving ``input`` sum to about ``metric(source input) - metric(clean)``, closer as
    ``steps`` grows. ``steps * batches`` forward + backward passes (tqdm shows them).
    ``qk_fix``: as in `eap`, q / k edges scored by AtP*'s QK fix.

    ``interpolate="activations"`` (after the EAP-IG authors' "EAP-IG-activations", their choice
    for mean and zero ablation, where no input embedding produces the ablated activations): the
    gradient is averaged over runs that each interpolate one group of node outputs (the input,
    one layer's heads, one MLP), everything else clean. Each run is the edge-mask state of
    `run_with_mask` with the group's outgoing edges ablated by ``1 - alpha``: readers
    see ``alpha * live + (1 - alpha) * source``, so gradients reach the group's own inputs
    scaled by ``alpha`` (the authors' code replaces the output by a constant, which stops them).
    ``n_groups`` times the passes (``1 + n_layers`` attention-only, ``1 + 2 n_layers`` otherwise);
    ``steps=1`` still equals `eap`. ``max_memory``: as in `eap` (a batch holds three
    blocks of sender outputs while its differences are built, then one).

    ``interpolate="mask"`` (auto-circuit's mask-gradient integrated gradients): every edge's mask
    moves from clean (0) to ablated (1) at once and an edge scores its mask gradient averaged over
    ``steps`` points from 0 to 1 inclusive (see `circuitkit.attribution.mask`; auto-circuit's
    ``integrated_grad_samples=steps - 1`` gives ``-steps`` times these scores). ``steps=1`` equals
    `eap`. Its runs go through the edge-mask engine with every edge's mask live, which holds
    the split q / k / v inputs: ``max_memory`` does not size its batches (give ``batch_size``).

    ``by_pos``: position-resolved scores, as in `eap` (with ``"mask"``, every edge has a
    mask per position and an edge at a position scores that mask's gradient). ``source``: as in
    `eap`.

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> scores = ck.eap_ig(model, task, steps=3, progress=False)
        >>> sorted(label for label, _ in scores.top(5))
        ['a0.h0->a1.h0<k>', 'a1.h0->logits', 'input->a0.h0<v>', 'input->a1.h0<q>', 'input->a1.h0<v>']
    """
    given = source
    _check_level(level)
    if interpolate not in INTERPOLATIONS:
        raise InputError(f"interpolate must be 'inputs' (the input embeddings), 'activations' (each layer's "
                         f"outputs in turn) or 'mask' (every edge's mask at once), got {interpolate!r}")
    task, index = prepare_attribution(model, task, ablation, steps, batch_size)
    if qk_fix:
        _check_qk_fix(model)
    if interpolate == "mask":
        size = qk_size = len(task) if batch_size is None else batch_size
        if by_pos:
            check_position_memory(index, task.clean.shape[1], "eap_ig", memory_budget(max_memory))
        source = batch_source(model, task, ablation, seed, size) if given is None else rows_of(given)
        matrix = mask_ig_matrix(model, task, index, source, steps, size, progress, by_pos)
    else:
        size = budget_batch_size(model, index, task, "eap_ig", batch_size, max_memory, by_pos)
        qk_size = budget_batch_size(model, index, task, "qk_fix", batch_size, max_memory) if qk_fix else size
        source = batch_source(model, task, ablation, seed, size) if given is None else rows_of(given)
        matrix = _edge_matrix(model, task, index, source, steps, size, progress, interpolate, by_pos)
    if qk_fix:
        matrix = _with_qk_fix(model, task, index, matrix, source, qk_size, progress)
    check_nonzero_scores(model, task, matrix, "eap_ig")
    return _edge_scores(model, task, index, matrix, "eap-ig", level, ablation=ablation, steps=steps, qk_fix=qk_fix,
                        interpolate=interpolate)


