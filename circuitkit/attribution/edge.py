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
    PromptSource,
    attn_output_norm,
    attn_pre_norm_sum,
    batch_source,
    final_resid_hook,
    graph_mode,
    head_results,
    is_post_norm,
    mlp_in_hook,
    model_device,
    output_acts,
    post_norm_head_diffs,
    result_hook,
    split_outputs,
    whole_vector_qk_norm,
)
from circuitkit.ablation.kinds import DEFAULT_ABLATION
from circuitkit.attribution.common import (
    RUNS_PER_CONTRACTION,
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
    # IG's runs over a batch share its differences: one contraction per batch, not per run
    shared = steps is not None and _Receivers.accumulates(model, index)
    for idx in batches:
        sub = task.subset(idx.cpu())
        stack = _source_stack(index, model, source_of, idx, sub.clean.shape)
        clean_input = None
        if steps is not None:  # IG runs are not at the clean point: the clean outputs from their own pass
            clean = output_acts(model, sub.clean)
            with torch.no_grad():
                _write_outputs_(stack, model, index, clean, subtract=True)
            clean_input = clean[INPUT_HOOK]
            del clean
        receivers = None
        for group in groups:
            for alpha in alphas:
                if shared and receivers is None:
                    receivers = _Receivers(model, index, stack.shape[1], stack.dtype)
                _edge_grad_run(model, sub, index, stack, clean_input, alpha, n_total, scores, group, receivers)
                if receivers is not None and receivers.n_runs == _Receivers.MAX_RUNS:
                    receivers.contract(stack, scores)
                    receivers = None
                bar.update()
        if receivers is not None:
            receivers.contract(stack, scores)
        del stack, receivers
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


def _write_outputs_(stack: Tensor, model, index: GraphIndex, outputs: dict[str, Tensor], subtract: bool) -> None:
    """In place: ``stack``'s rows (``[n_upstream, rows, d_model]``) set to, or with ``subtract``
    lessened by, the node outputs of one run, from its output hooks' values (`output_hooks`: the
    embeddings, each layer's ``hook_z``, each MLP's output); each layer's ``z @ W_O`` goes into its
    heads' rows by one batched product, never held apart."""
    rows = stack.shape[1]
    rest = (lambda row, value: row.sub_(value)) if subtract else (lambda row, value: row.copy_(value))
    rest(stack[0], outputs[INPUT_HOOK].reshape(rows, -1).to(stack.dtype))
    h = index.n_heads
    for layer in range(index.n_layers):
        first = 1 + layer * index.block
        z = outputs[result_hook(layer)].to(stack.dtype).permute(2, 0, 1, 3).reshape(h, rows, -1)  # [h, rows, d_head]
        w_o = backend.head_output_weights(model, layer).detach().to(stack.dtype)  # [h, d_head, d_model]
        if subtract:
            stack[first:first + h].baddbmm_(z, w_o, alpha=-1.0)
        else:
            torch.bmm(z, w_o, out=stack[first:first + h])
        if index.has_mlp:
            rest(stack[first + h], outputs[names.output_hook(names.mlp(layer))].reshape(rows, -1).to(stack.dtype))


def _source_stack(index: GraphIndex, model, source_of, idx: Tensor, shape: torch.Size) -> Tensor:
    """``[n_upstream, rows, d_model]``: the source outputs of prompts ``idx``, written straight from
    the source run's output hooks where the source has one per prompt (`PromptSource`), from the
    per-node outputs otherwise."""
    if not isinstance(source_of, PromptSource):
        return _stack(index, source_of(idx), shape)
    acts = source_of.acts(idx)
    first = acts[INPUT_HOOK]
    stack = torch.empty((len(index.upstream), shape[0] * shape[1], first.shape[-1]), dtype=first.dtype,
                        device=first.device)
    _write_outputs_(stack, model, index, acts, subtract=False)
    return stack


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


class _Receivers:
    """The receivers' gradients of one or more runs over the same prompts (each head's q / k / v
    input, each MLP's input, the final residual), kept small until `contract` multiplies them
    with the sender differences, once, a few rows at a time.

    A head's gradient at its layer's residual input is ``J^T (g W^T)``: ``g = dM/d hook_q`` (k, v),
    ``W`` the projection with the norm's weight folded in, ``J`` the norm's Jacobian at the run's
    input. For TransformerLens's LayerNorm (RMSNorm: no centring)
    ``J^T u = (u - mean u - x_hat mean(u x_hat)) / scale``, and ``mean(g W^T x_hat)`` is
    ``g . (q - c) / d_model`` from the run's own ``hook_q`` value (``c``: the biases). So the sum
    over runs needs ``sum g / scale`` (``[rows, heads, d_head]``), and per run ``x_hat`` and one
    number per head and row, never a ``[heads, rows, d_model]`` block per run; the centring term
    is contracted through each sender difference's row sum. Where ``hook_q`` is not such a
    projection (a bridge's modules, shortformer positions, quantised weights) the run's products
    are formed and corrected at `contract` (one run per contraction: ``analytic`` False).
    """

    # bytes of the sender differences one contraction step reads (about what stays in a CPU's cache)
    CHUNK_BYTES = 2 ** 25
    # runs that share one contraction: each keeps a [rows, d_model] x_hat per layer until then
    MAX_RUNS = RUNS_PER_CONTRACTION
    # receiver rows per product (several layers' heads stacked)
    GROUP_ROWS = 96

    def __init__(self, model, index: GraphIndex, rows: int, dtype: torch.dtype) -> None:
        self.model, self.index, self.rows, self.dtype = model, index, rows, dtype
        self.analytic = _Receivers.is_analytic(model, index)
        self.heads: dict[tuple[int, int], Tensor] = {}  # (layer, which) -> sum of g / scale
        self.fixes: dict[int, list[tuple[int, Tensor, Tensor]]] = {}  # layer -> (which, beta, x_hat) per run
        self.inputs: dict[int, Tensor] = {}  # layer -> x_hat (or, generic norms, x) of the one run
        self.vectors: dict[int, list] = {}  # slot row -> [n_cols, summed gradient [rows, d_model]]
        self.run_norms: dict[int, tuple[Tensor, Tensor]] = {}
        self.norms: dict[int, tuple] = {}
        self.n_runs = 0

    @staticmethod
    def is_analytic(model, index: GraphIndex) -> bool:
        cfg = model.cfg
        return (not backend.is_bridge(model) and cfg.positional_embedding_type != "shortformer"
                and not getattr(cfg, "load_in_4bit", False)
                and all(_norm_kind(_head_input_norm(model, layer)) != "generic" for layer in range(index.n_layers)))

    @staticmethod
    def accumulates(model, index: GraphIndex) -> bool:
        """Whether runs over the same prompts may share one contraction: the differences are the
        same for every run (no post-norm layer re-linearised per run) and the heads' norm
        corrections are analytic."""
        return _Receivers.is_analytic(model, index) and all(
            attn_output_norm(model, layer) is None for layer in range(index.n_layers))

    def norm(self, layer: int) -> tuple:
        """``(norm, kind, eps, projections [3 x [h, d_head, d_model]], biases [3 x [h, d_head]] or None)``."""
        if layer not in self.norms:
            norm = _head_input_norm(self.model, layer)
            kind = _norm_kind(norm)
            projections = [_input_projection(self.model, layer, which, norm, kind, self.dtype) for which in range(3)]
            biases = None
            if self.analytic and kind in ("ln", "rms"):
                attn = self.model.blocks[layer].attn
                ln_bias = getattr(norm, "b", None)
                biases = []
                for w, bias in ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V)):
                    c = bias.detach().to(self.dtype).clone()
                    if ln_bias is not None:
                        c += torch.einsum("d,hde->he", ln_bias.detach().to(self.dtype), w.detach().to(self.dtype))
                    biases.append(c)
            self.norms[layer] = (norm, kind, getattr(norm, "eps", None), projections, biases)
        return self.norms[layer]

    def new_run(self) -> None:
        self.run_norms = {}
        self.n_runs += 1

    def add_head(self, layer: int, which: int, grad: Tensor, x: Tensor, value: Tensor) -> None:
        """One run's ``dM/d hook_q`` (k, v) of ``layer``, with that run's layer input ``x`` and ``hook_q`` value."""
        norm, kind, eps, _, biases = self.norm(layer)
        h = self.index.n_heads
        g = grad.detach().reshape(self.rows, h, -1).to(self.dtype)
        if kind in ("ln", "rms"):
            if layer not in self.run_norms:
                self.run_norms[layer] = _normalised(x.reshape(self.rows, -1).to(self.dtype), eps, centred=kind == "ln")
            x_hat, inv_scale = self.run_norms[layer]
            g = g * inv_scale[:, :, None]
            if self.analytic:  # mean(g W^T x_hat) / scale, from the run's own projection q - c = x_hat W
                q = value.reshape(self.rows, h, -1).to(self.dtype) - biases[which]
                beta = torch.einsum("rhe,rhe->hr", g, q) / x_hat.shape[-1]
                self.fixes.setdefault(layer, []).append((which, beta, x_hat))
            else:
                self.inputs[layer] = x_hat
        elif kind == "generic":
            self.inputs[layer] = x.reshape(self.rows, -1)
        key = (layer, which)
        if key in self.heads:
            self.heads[key] += g
        else:
            self.heads[key] = g.clone()

    def add_vector(self, grad: Tensor, row: int, n_cols: int) -> None:
        """One run's gradient at an MLP's input or the final residual (slot ``row``)."""
        g = grad.detach().reshape(self.rows, -1).to(self.dtype)
        if row in self.vectors:
            self.vectors[row][1] += g
        else:
            self.vectors[row] = [n_cols, g.clone()]

    @classmethod
    def _groups(cls, heights: list[int]) -> list[list[int]]:
        """Consecutive layers whose receivers share one product: at least `GROUP_ROWS` rows each
        (a matrix product with a few dozen rows runs at about half the speed of one with a hundred)."""
        groups: list[list[int]] = []
        rows = 0
        for i, height in enumerate(heights):
            if not groups or rows >= cls.GROUP_ROWS:
                groups.append([])
                rows = 0
            groups[-1].append(i)
            rows += height
        return groups

    @torch.no_grad()
    def contract(self, diff: Tensor, scores: Tensor) -> None:
        """Add ``sum over rows and d_model of receiver gradient x sender difference`` to ``scores``
        (``diff``: ``[n_upstream, rows, d_model]``; ``scores`` ``[n_slots, n_upstream]``, or
        position-resolved ``[n_pos, n_slots, n_upstream]`` with rows prompt-major)."""
        index, h = self.index, self.index.n_heads
        by_pos = scores.ndim == 3
        n_pos = scores.shape[0] if by_pos else 1
        layers = sorted({layer for layer, _ in self.heads})
        plans = []
        for layer in layers:
            norm, kind, eps, projections, _ = self.norm(layer)
            whichs = sorted(which for lyr, which in self.heads if lyr == layer)
            n_cols = index.n_before_slot_layer(layer)
            shape = (n_pos, len(whichs) * h, n_cols) if by_pos else (len(whichs) * h, n_cols)
            # the centring term's per-head row means of each projection, [h, d_head]
            row_means = [projections[which].mean(-1) for which in whichs] if kind == "ln" else None
            plans.append((layer, norm, kind, whichs, projections, row_means, n_cols,
                          torch.zeros(shape, dtype=diff.dtype)))
        vector_rows = sorted(self.vectors)
        vector_cols = max((self.vectors[r][0] for r in vector_rows), default=0)
        vector_total = torch.zeros((n_pos, len(vector_rows), vector_cols) if by_pos else (len(vector_rows), vector_cols),
                                   dtype=diff.dtype)
        row_sums = diff.sum(-1) if any(plan[2] == "ln" for plan in plans) else None  # [n_upstream, rows]
        plan_rows = [len(plan[3]) * h for plan in plans]  # each layer's receiver rows
        groups = self._groups(plan_rows)
        step = max(1, self.CHUNK_BYTES // (diff.shape[0] * diff.shape[-1] * diff.element_size()))
        heights = [sum(plan_rows[i] for i in group) for group in groups]
        # one block for every group's receivers, reused: a fresh one per chunk and group would be
        # faulted in anew each time once the allocator has handed the last one back
        receiver_rows = torch.empty(max(heights, default=0) * min(step, self.rows) * diff.shape[-1], dtype=diff.dtype,
                                    device=diff.device)
        for r0 in range(0, self.rows, step):
            r1 = min(self.rows, r0 + step)
            positions = torch.arange(r0, r1, device=diff.device) % n_pos if by_pos else None
            for group, height in zip(groups, heights, strict=True):
                width = max(plans[i][6] for i in group)
                stacked = receiver_rows[:height * (r1 - r0) * diff.shape[-1]].view(height, r1 - r0, diff.shape[-1])
                offsets = []
                start = 0
                for i in group:
                    layer, norm, kind, whichs, projections, row_means, n_cols, total = plans[i]
                    recv = stacked[start:start + plan_rows[i]]
                    offsets.append((start, start + plan_rows[i]))
                    start += plan_rows[i]
                    for j, which in enumerate(whichs):
                        torch.bmm(self.heads[(layer, which)][r0:r1].transpose(0, 1), projections[which],
                                  out=recv[j * h:(j + 1) * h])  # [h, rows, d_model]
                    if kind in ("ln", "rms") and self.analytic:
                        for which, beta, x_hat in self.fixes.get(layer, []):
                            j = whichs.index(which)
                            recv[j * h:(j + 1) * h].addcmul_(beta[:, r0:r1, None], x_hat[None, r0:r1], value=-1.0)
                    elif kind in ("ln", "rms"):
                        x_hat = self.inputs[layer][r0:r1]
                        along = torch.einsum("hrd,rd->hr", recv, x_hat) / x_hat.shape[-1]
                        recv.addcmul_(along[..., None], x_hat[None], value=-1.0)
                    elif kind == "generic":
                        with torch.enable_grad():
                            x_rep = self.inputs[layer][r0:r1].detach()[None].expand(recv.shape[0], -1, -1)
                            x_rep = x_rep.requires_grad_(True)
                            (recv[:],) = torch.autograd.grad(norm(x_rep), x_rep, recv.clone())
                    means = None
                    if kind == "ln":  # the centring: each row's mean of the product times the difference's row sum
                        means = torch.cat([torch.einsum("rhe,he->hr", self.heads[(layer, which)][r0:r1], m)
                                           for which, m in zip(whichs, row_means, strict=True)])
                    if by_pos:
                        per_row = torch.einsum("Rrd,crd->rRc", recv, diff[:n_cols, r0:r1])
                        if means is not None:
                            per_row -= torch.einsum("Rr,cr->rRc", means, row_sums[:n_cols, r0:r1])
                        total.index_add_(0, positions, per_row)
                    elif means is not None:
                        total -= means @ row_sums[:n_cols, r0:r1].T
                if not by_pos:
                    # one product for the group: its earlier layers' extra columns (senders after
                    # them) are computed and dropped, cheaper than several thin products
                    product = stacked.reshape(stacked.shape[0], -1) @ diff[:width, r0:r1].reshape(width, -1).T
                    for i, (lo, hi) in zip(group, offsets, strict=True):
                        total, n_cols = plans[i][7], plans[i][6]
                        total += product[lo:hi, :n_cols]
            if vector_rows:
                vecs = torch.stack([self.vectors[row][1][r0:r1] for row in vector_rows])
                block = diff[:vector_cols, r0:r1]
                if by_pos:
                    vector_total.index_add_(0, positions, torch.einsum("Rrd,crd->rRc", vecs, block))
                else:
                    vector_total += vecs.reshape(len(vector_rows), -1) @ block.reshape(vector_cols, -1).T
        for layer, _, _, whichs, _, _, n_cols, total in plans:
            for i, which in enumerate(whichs):
                row = layer * index.slots_per_layer + which * h
                scores[..., row: row + h, :n_cols] += total[..., i * h:(i + 1) * h, :].to(scores.dtype)
        for i, row in enumerate(vector_rows):
            n_cols = self.vectors[row][0]
            scores[..., row, :n_cols] += vector_total[..., i, :n_cols].to(scores.dtype)


def _edge_grad_run(model, sub, index: GraphIndex, stack: Tensor, clean_input: Tensor | None, alpha: float,
                   n_total: int, scores: Tensor, group: tuple[str, list[str]] | None = None,
                   receivers: _Receivers | None = None) -> None:
    """One forward + backward: its receivers' gradients (`_Receivers`), contracted with the
    sender differences into ``scores`` (``[n_slots, n_upstream]``, or ``[n_pos, n_slots,
    n_upstream]`` to keep each position's products apart) after the backward pass, or, with
    ``receivers`` given, added to those for the caller to contract once for all its runs.

    ``clean_input=None`` (EAP): ``stack`` holds the source outputs ``[n_upstream, rows, d_model]``
    (``rows = batch * pos``) and becomes the differences in place once the run has recorded the
    clean outputs. Otherwise ``stack`` is ``source - clean`` and the run is IG's at ``alpha``.
    """
    at_clean = clean_input is None
    b, p = sub.clean.shape[0], sub.clean.shape[1]
    state: dict = {"diff": None, "outputs": {}, "pre": {}, "z": {}, "resid": {}}
    input_alpha = alpha if group is None or group[0] == INPUT_HOOK else 1.0
    post_norm_layers = [layer for layer in range(index.n_layers) if attn_output_norm(model, layer) is not None]
    bridge = backend.is_bridge(model)
    own = receivers is None
    if own:
        receivers = _Receivers(model, index, b * p, stack.dtype)
    receivers.new_run()

    def head_cols(layer: int) -> slice:
        return slice(1 + layer * index.block, 1 + layer * index.block + index.n_heads)

    def diff() -> Tensor:
        # [n_upstream, rows, d_model]: source minus clean output of every upstream node
        if state["diff"] is not None:
            return state["diff"]
        d = stack
        if at_clean:
            _write_outputs_(d, model, index, state["outputs"], subtract=True)
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

    def head_input(x, hook, layer: int, which: int):
        # dM/d hook_q (k, v) with the run's own value of it and its layer's input
        if x.requires_grad:
            value = x.detach()
            x.register_hook(lambda grad: receivers.add_head(layer, which, grad, state["resid"][layer], value))
            return x

    hooks: list = [(INPUT_HOOK, input_hook)]
    for layer in range(index.n_layers):
        if layer > 0:
            hooks.append((names.hook("resid_pre", layer), _bind(record_resid, layer=layer)))
        for which, q in enumerate(names.QKV):
            hooks.append((names.hook(q, layer), _bind(head_input, layer=layer, which=which)))
        hooks.append((result_hook(layer), _bind(record_z, layer=layer)))
        if index.has_mlp:
            row = layer * index.slots_per_layer + 3 * index.n_heads
            hooks.append((mlp_in_hook(layer), watch(receivers.add_vector, branch=True, row=row,
                                                    n_cols=index.n_before_slot_layer(layer, mlp=True))))
            out_hook = names.output_hook(names.mlp(layer))
            hooks.append((out_hook, _bind(record, name=out_hook)))
    hooks.append((final_resid_hook(model), watch(receivers.add_vector, row=len(index.slots) - 1,
                                                  n_cols=len(index.upstream))))
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
    if own:
        with torch.no_grad():
            receivers.contract(diff(), scores)
    # the hooks' closures and the recorded tensors' graphs reference each other: without this the
    # run's blocks (a post-norm run's cloned differences) live until the cyclic collector runs
    state.clear()



def _head_input_norm(model, layer: int):
    """The norm between the residual stream and ``layer``'s q / k / v projections (None for
    post-norm blocks, which feed attention the raw residual)."""
    return None if is_post_norm(model) else backend.attention_input_norm(model, layer)


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


def _normalised(x: Tensor, eps: float, centred: bool) -> tuple[Tensor, Tensor]:
    """``(x_hat, 1 / scale)`` of a LayerNorm (``centred``) or RMSNorm at its input ``x`` (``[rows, d]``).

    The norm's backward maps a gradient ``g`` at its normalised output to
    ``(g - mean g - x_hat mean(g x_hat)) / scale`` (RMSNorm: no ``mean g``); `_Receivers` scales
    each row's ``dM/d hook_q`` by ``1 / scale`` before projecting it, subtracts the ``x_hat`` term
    in place and takes the ``mean g`` term out of the contraction (a row's mean times the sender
    difference's row sum)."""
    if centred:
        x = x - x.mean(-1, keepdim=True)
    inv_scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # [rows, 1]
    return x * inv_scale, inv_scale


def _input_projection(model, layer: int, which: int, norm, kind: str, dtype) -> Tensor:
    """``[n_heads, d_head, d_model]``: what maps a head's q / k / v gradient to its (normalised)
    input, ``W^T`` with the norm's weight folded in."""
    attn = model.blocks[layer].attn
    w = (attn.W_Q, attn.W_K, attn.W_V)[which].detach().to(dtype)  # [h, d_model, d_head]
    if kind in ("ln", "rms") and hasattr(norm, "w"):
        w = w * norm.w.detach().to(dtype)[None, :, None]
    return w.transpose(1, 2).contiguous()


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
    pattern and ``dM/d pattern`` (key ``("grad", hook name)``) and the attention mask its block received."""
    saved: dict = {}

    def keep(name: str, grad: bool = False):  # by name: a bridge's hook point carries its own name
        def hook(x, hook):
            saved[name] = x if grad else x.detach()
        return hook

    def input_leaf(x, hook):  # the gradient starts here, so frozen weights (or none) do not matter
        saved[INPUT_HOOK] = x.detach()
        return x.detach().requires_grad_(True)

    def block_inputs(module, args, kwargs, layer):
        saved[("attention_mask", layer)] = kwargs.get("attention_mask")

    wanted = []
    for layer in range(index.n_layers):
        wanted += [names.head_input_hook(layer, x) for x in names.QKV] + [result_hook(layer)]
        if index.has_mlp:
            wanted.append(names.output_hook(names.mlp(layer)))
    patterns = [names.hook("pattern", layer) for layer in range(index.n_layers)]
    hooks: list = [(INPUT_HOOK, input_leaf)] + [(name, keep(name)) for name in wanted]
    hooks += [(name, keep(name, grad=True)) for name in patterns]
    handles = [model.blocks[layer].register_forward_pre_hook(_bind_pre(block_inputs, layer=layer), with_kwargs=True)
               for layer in range(index.n_layers)]
    try:
        with graph_mode(model), model.hooks(fwd_hooks=hooks), torch.enable_grad():
            logits = model(sub.clean)
            # gradients to the patterns only: nothing accumulates in the weights' .grad
            grads = torch.autograd.grad(sub.per_prompt(logits).sum() / n_total, [saved[n] for n in patterns],
                                        allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    for name, grad in zip(patterns, grads, strict=True):
        saved[name] = saved[name].detach()
        saved[("grad", name)] = torch.zeros_like(saved[name]) if grad is None else grad
    return saved


def _qk_fix_layer(model, index: GraphIndex, layer: int, saved: dict, diffs: Tensor, matrix: Tensor,
                  tokens: Tensor, senders_per_run: int = 8) -> None:
    """Fill ``matrix``'s q and k rows of ``layer``: ``sum dM/d pattern * (pattern(u ablated) - pattern)``
    (a ``[n_pos, n_slots, n_upstream]`` matrix: per query position for q, per key position for k).

    A ``HookedTransformer``'s attention layer is run alone on the moved inputs; a bridge's attention
    is the Hugging Face family's, so the model runs ``tokens`` up to the layer's pattern with the
    moved split input in place."""
    pattern = saved[names.hook("pattern", layer)]
    grad = saved[("grad", names.hook("pattern", layer))]  # [b, H, q, k]
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

    Memory: each receiver's gradient is held at its smallest (a head's at ``hook_q``, ``[batch,
    pos, heads, d_head]``) and contracted with the sender differences after the backward pass, so
    a batch holds one forward + backward pass and one ``[n_upstream, batch, pos, d_model]`` block
    of differences. Batches get fewer prompts than ``batch_size`` where
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


