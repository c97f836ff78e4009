"""Exact linear feature graphs over transcoders: the attribution graphs of circuit-tracer
(Ameisen et al. 2025, "Circuit Tracing"; pip ``circuit-tracer``).

With a transcoder in place of every MLP, the attention patterns and the normalisation scales
frozen at their values on the prompt, and the error terms held as constants, the map from the
graph's source nodes to every feature's pre-activation and to the metric is affine: the rest is
attention's OV path, the residual stream, centring, the unembedding and the dictionaries' linear
encoders / decoders. So each edge is exact, not an estimate:

* ``s -> t``: ``a_s · ∂pre_t / ∂a_s`` with every other node fixed (the direct effect of ``s`` on
  ``t``'s pre-activation: the input of ``t``'s activation function, ``[..., d_sae]``);
* ``s -> logits``: ``a_s · ∂m / ∂a_s`` the same way, for a metric affine in the logits
  (``logit_diff``);
* sources are features (``a_s`` = the activation), error nodes (``a_s`` = the error vector,
  dotted with the gradient) and the input (the embeddings at each position).

Completeness: the contributions into a node sum to its value minus what the biases alone give it
(the value when every source is 0, patterns and scales still frozen), which the tests check;
circuit-tracer's ``graph.adjacency_matrix`` holds the same contributions. Node contributions are
``a_s · dm/da_s`` through the replacement model (errors constant, the dictionaries' activation
functions live), what each node's paths to the metric add up to.

Scores follow circuitkit's sign (as every estimate's: the change when the source is ablated, here
set to 0), so each is the negative of the contribution: what the metric needs is negative. The
attribution-graph export flips it back to circuit-tracer's sign.

The attention patterns being frozen, a feature that matters by shaping a pattern (the query or key
side of a head) gets no edge: the graph explains the OV paths only, as circuit-tracer's does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from circuitkit import names
from circuitkit.errors import InputError
from circuitkit.sae.graph import (
    FeatureGraph,
    check_graph_args,
    grad_or_zeros,
    node_tables,
    reduce_prompts,
)
from circuitkit.sae.splice import Site, make_sites, splice_run
from circuitkit.scores import Scores
from circuitkit.tokenizers import check_token_ids

FROZEN_HOOKS = ("attn.hook_pattern", "hook_scale")  # attention patterns; every LayerNorm / RMSNorm scale
LINEAR_METRICS = ("logit_diff",)


@contextlib.contextmanager
def frozen_nonlinearities(model, values: dict[str, Tensor] | None = None) -> Iterator[dict[str, Tensor]]:
    """Forward passes inside see every attention pattern and normalisation scale as a constant
    (no gradient). With ``values`` (the dict an earlier frozen run yielded) they take those values
    instead of computing their own: the same linear map evaluated at other inputs."""
    store: dict[str, Tensor] = {} if values is None else values
    replay = values is not None

    def frozen(name: str):  # by name: a bridge's hook point carries its own name, not the alias
        def hook_fn(x: Tensor, hook) -> Tensor:
            if replay:
                return store[name]
            store[name] = x.detach()
            return store[name]
        return hook_fn

    hooks = [(name, frozen(name)) for name in model.hook_dict if name.endswith(FROZEN_HOOKS)]
    with model.hooks(fwd_hooks=hooks):
        yield store


class _RecordInput(nn.Module):
    """Wraps a dictionary's activation function and keeps its input (the pre-activation)."""

    def __init__(self, fn, store: dict[int, Tensor], index: int):
        super().__init__()
        self.fn, self.store, self.index = fn, store, index

    def forward(self, x: Tensor) -> Tensor:
        self.store[self.index] = x
        return self.fn(x)


@contextlib.contextmanager
def recorded_preactivations(sites: Sequence[Site]) -> Iterator[dict[int, Tensor]]:
    """``{site index: [batch, pos, d_sae]}``: the input of each site's activation function in the
    runs inside (after any rescaling the architecture applies, e.g. TopK's decoder norms)."""
    store: dict[int, Tensor] = {}
    originals = [s.sae.activation_fn for s in sites]
    for i, s in enumerate(sites):
        s.sae.activation_fn = _RecordInput(originals[i], store, i)
    try:
        yield store
    finally:
        for s, fn in zip(sites, originals, strict=True):
            s.sae.activation_fn = fn


def check_linear(model, sites: Sequence[Site], task) -> None:
    """Raise ``ValueError`` unless the replacement model is linear in its nodes: a transcoder
    writing every MLP's output, and a metric affine in the logits."""
    if not model.cfg.attn_only:
        replaced = {s.layer for s in sites if s.is_transcoder and s.hook_out == names.hook("mlp_out", s.layer)}
        missing = [layer for layer in range(model.cfg.n_layers) if layer not in replaced]
        if missing:
            raise InputError(f"exact linear edges need every MLP replaced by a transcoder writing "
                             f"blocks.L.hook_mlp_out; layers {missing} have none. Splice transcoders there, or use "
                             f"feature_graph(method='ig' or 'attribution'), which estimates edges through MLPs")
    metric = task.metric if isinstance(task.metric, str) else getattr(task.metric, "__name__", "a callable")
    if metric not in LINEAR_METRICS:
        raise InputError(f"exact linear edges need a metric affine in the logits ({LINEAR_METRICS}); task "
                         f"{task.name!r} uses {metric!r}. Build the task with metric='logit_diff'")


def linear_feature_graph(model, saes, task, *, positions: str = "each", node_threshold: float = 0.0,
                         max_nodes: int | None = None, chunk: int = 64, progress: bool = True) -> FeatureGraph:
    """The exact linear graph of ``task``'s prompts (summed over prompts) as a `FeatureGraph`.

    ``saes``: as `make_sites` takes them; a transcoder must write
    every MLP's output (SAEs at other sites are allowed: a spliced SAE is linear too). Candidate
    nodes: the features active on some prompt at a position (``|node score| >= node_threshold``, at
    most ``max_nodes`` per site, largest first), every error node, every input position and
    ``logits``; edges among them, each computed by one batched backward pass per ``chunk`` targets.
    Edges that are exactly 0 (no direct path, e.g. from a later position) are left out.
    """
    check_graph_args("zero", positions)
    task.check_model(model)
    sites = make_sites(model, saes)
    check_linear(model, sites, task)
    clean = check_token_ids(model, task.clean)
    n_pos, n = clean.shape[1], len(sites)
    feats, errs, inputs = node_tables(sites, positions, n_pos)

    # node scores: the replacement model's attribution (errors constant, activation functions live)
    with frozen_nonlinearities(model), splice_run(
            model, sites, intervene=lambda i, a, e: (a, e.detach().requires_grad_(True)), input_leaf=True) as rec:
        metric = task.score(model(clean))
    grads = grad_or_zeros(metric, [rec.input, *[rec.leaves_acts[i] for i in range(n)], *[rec.leaves_errors[i] for i in range(n)]])
    x_in = rec.input.detach()
    acts = [rec.leaves_acts[i].detach() for i in range(n)]
    errors = [rec.leaves_errors[i].detach() for i in range(n)]
    ie_in = reduce_prompts((grads[0] * x_in).sum(-1), positions)
    ie_acts = [reduce_prompts(grads[1 + i] * acts[i], positions) for i in range(n)]  # [npos, d_sae]
    ie_err = [reduce_prompts((grads[1 + n + i] * errors[i]).sum(-1), positions) for i in range(n)]
    labels, values = list(inputs), [ie_in]
    for i in range(n):
        labels += [x for row in feats[i] for x in row] + errs[i]
        values += [ie_acts[i].reshape(-1), ie_err[i]]
    meta = {"baseline": "zero", "positions": positions, "clean_metric": float(metric.detach()), "exact": True}
    node_scores = Scores(-torch.cat(values).detach(), labels, "feature-linear", task=task.name,
                         metric=task.metric_name, meta=dict(meta))

    # candidates: active features, largest attribution first
    cand: list[list[tuple[int, int]]] = []
    for i in range(n):
        active = reduce_prompts((acts[i] != 0).to(acts[i].dtype), positions) > 0
        flat = torch.where(active, ie_acts[i].abs(), torch.full_like(ie_acts[i], -1.0)).reshape(-1)
        order = [j for j in torch.argsort(flat, descending=True).tolist() if bool(active.reshape(-1)[j])
                 and float(flat[j]) >= node_threshold]
        cand.append([divmod(j, sites[i].d_sae) for j in order][:max_nodes])
    candidates = list(inputs) + [feats[i][p][f] for i in range(n) for p, f in cand[i]] + \
        [e for i in range(n) for e in errs[i]] + [names.LOGITS]

    # edges: the cut run (every site's features and errors are leaves), linear in them
    with frozen_nonlinearities(model), recorded_preactivations(sites) as pre, \
            splice_run(model, sites, cut=True, input_leaf=True) as cut:
        metric = task.score(model(clean))
    ups = [cut.input, *[cut.leaves_acts[i] for i in range(n)], *[cut.leaves_errors[i] for i in range(n)]]
    ups_values = [x_in, *acts, *errors]
    n_p = 1 if positions == "sum" else n_pos
    cand_mask = []
    for i in range(n):
        mask = torch.zeros(n_p, sites[i].d_sae, dtype=torch.bool)
        for p, f in cand[i]:
            mask[p, f] = True
        cand_mask.append(mask)
    edge_labels: list[str] = []
    edge_values: list[Tensor] = []

    def reduce(t: Tensor) -> Tensor:
        """``[targets, batch, pos, ...]`` -> ``[targets, npos, ...]`` summed over prompts (and positions)."""
        t = t.sum(1)
        return t.sum(1, keepdim=True) if positions == "sum" else t

    def record(children: Sequence[str], g_up: Sequence[Tensor]) -> None:
        """Keep the nonzero edges from every candidate source into each of ``children``."""
        blocks = [(inputs, reduce((g_up[0] * ups_values[0]).sum(-1)).unsqueeze(-1), None)]
        for i in range(n):
            blocks.append((feats[i], reduce(g_up[1 + i] * ups_values[1 + i]), cand_mask[i]))
            blocks.append((errs[i], reduce((g_up[1 + n + i] * ups_values[1 + n + i]).sum(-1)).unsqueeze(-1), None))
        for ids, w, mask in blocks:
            w = w.detach().cpu()
            keep = w != 0 if mask is None else (w != 0) & mask
            hits = torch.nonzero(keep).tolist()
            for c, p, f in hits:
                parent = ids[p][f] if mask is not None else ids[p]
                edge_labels.append(names.edge(parent, children[c]))
            edge_values.append(w[keep])

    jobs = [(t, p, f) for t in range(n) for p, f in cand[t]]
    bar = tqdm(total=1 + -(-len(jobs) // chunk), desc="linear feature graph", disable=not progress, leave=False)
    record([names.LOGITS], [g.unsqueeze(0) for g in grad_or_zeros(metric, ups)])
    bar.update()
    for start in range(0, len(jobs), chunk):
        batch = jobs[start:start + chunk]
        for t in sorted({j[0] for j in batch}):
            rows = [(p, f) for s, p, f in batch if s == t]
            onehot = torch.zeros(len(rows), *pre[t].shape, dtype=pre[t].dtype, device=pre[t].device)
            for j, (p, f) in enumerate(rows):
                onehot[j, :, slice(None) if positions == "sum" else slice(p, p + 1), f] = 1.0
            record([feats[t][p][f] for p, f in rows], grad_or_zeros([pre[t]], ups, [onehot], batched=True))
        bar.update()
    bar.close()
    edge_scores = Scores(-torch.cat(edge_values).float() if edge_values else torch.zeros(0), edge_labels, "feature-linear",
                         task=task.name, metric=task.metric_name, meta=dict(meta))
    return FeatureGraph(node_scores, edge_scores, list(sites), positions, "zero", candidates,
                        meta={**meta, "n_candidates": len(candidates), "node_threshold": node_threshold,
                              "max_nodes": max_nodes})
