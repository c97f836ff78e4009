"""Layer-level circuits: one node per attention block (``attn_out.L``) and per MLP (``m{L}``).

Where a model's attention cannot be taken apart into heads whose inputs and outputs add up
(multi-head latent attention, Gemma-4's per-layer head widths and shared keys, a hybrid's mixers;
`circuitkit.models.backend.audit`), a circuit is still found one level up. A node outside the
circuit reads its output from the ablation source (the vocabulary of
`circuitkit.ablation.kinds`) and everything after it is the model's own computation, so no
residual-stream decomposition is assumed: per-layer embeddings, multipliers and mixers outside
the hooks stay where the model puts them.

Faithfulness is `circuitkit.circuit.evaluation`'s, with nodes in place of edges:
``f(C) = (m(C) - m(∅)) / (m(full) - m(∅))``, where ``m(∅)`` ablates every node.

Scores estimate ``m(node ablated) - m(clean)``, as the edge methods' do:

* ``exact`` ablates one node at a time;
* ``eap`` is the first-order term, ``(source - clean) . dm/d output`` at the clean run;
* ``eap-ig`` integrates that gradient along every node's ablation mask at once
  (``output = live + α (source - live)``, α from 0 to 1), so the scores sum to
  ``m(∅) - m(full)`` as ``steps`` grows (completeness).
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit import names
from circuitkit.ablation.kinds import DEFAULT_ABLATION, check_kind, resample_permutation
from circuitkit.errors import InputError
from circuitkit.models import backend
from circuitkit.scores import Scores
from circuitkit.tasks.metrics import check_ablation_changes_metric, normalized

LAYER_METHODS = ("eap-ig", "eap", "exact")


def layer_nodes(model) -> list[str]:
    """``attn_out.0, m0, attn_out.1, m1, ...`` (no ``m{L}`` in an attention-only model)."""
    out: list[str] = []
    for layer in range(model.cfg.n_layers):
        out.append(names.site("attn_out", layer))
        if not model.cfg.attn_only:
            out.append(names.mlp(layer))
    return out


def is_layer_node(node_id: str) -> bool:
    node = names.parse_node(node_id)
    return node.kind == "site" and node.hook == "attn_out"


def node_hook(node_id: str) -> str:
    """The hook whose value a layer node's ablation replaces."""
    node = names.parse_node(node_id)
    if node.kind == "site" and node.hook == "attn_out":
        return names.hook("attn_out", node.layer)
    if node.kind == "mlp" and node.pos is None:
        return names.output_hook(node)
    raise InputError(f"{node_id!r} is not a layer-level node; layer circuits use 'attn_out.<layer>' and "
                     "'m<layer>' (circuitkit.circuit.layers.layer_nodes)")


def _run(model, tokens: Tensor, fwd_hooks) -> Tensor:
    if backend.is_bridge(model):
        return backend.run_bridge(model, tokens, fwd_hooks, None)
    return model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)


class LayerEvaluator:
    """The ablation source and the full / empty metrics of one (model, task, ablation) on the
    layer graph, with every metric it computes cached (the node-level twin of
    `EdgeEvaluator`)."""

    def __init__(self, model, task, ablation: str = DEFAULT_ABLATION, seed: int = 0) -> None:
        check_kind(ablation)
        task.check_model(model)
        self.model, self.task, self.ablation = model, task, ablation
        self.nodes = layer_nodes(model)
        self._node_set = set(self.nodes)
        self.hooks = {n: node_hook(n) for n in self.nodes}
        self.source = self._source(seed)
        self._cache: dict[frozenset[str], float] = {}
        with torch.no_grad():
            self.metric_full = float(task.score(model(self.tokens)))
        self.metric_empty = self.metric([])
        check_ablation_changes_metric(self.metric_full, self.metric_empty, ablation, task.name)

    @property
    def tokens(self) -> Tensor:
        return self.task.clean.to(backend.model_device(self.model))

    def _outputs(self, tokens: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            _, cache = backend.run_with_cache(self.model, tokens.to(backend.model_device(self.model)),
                                              set(self.hooks.values()))
        return {n: cache[h] for n, h in self.hooks.items()}

    def _source(self, seed: int) -> dict[str, Tensor]:
        """Per node, what its ablated output reads: ``[batch or 1, pos, d_model]``."""
        kind, task = self.ablation, self.task
        if kind == "corrupted":
            return self._outputs(task.corrupted)
        if kind == "resample":
            perm = resample_permutation(len(task), seed=seed, prompts="clean")
            return self._outputs(task.clean[perm])
        clean = self._outputs(task.clean if kind != "mean-corrupted" else task.corrupted)
        if kind == "zero":
            return {n: torch.zeros_like(v[:1]) for n, v in clean.items()}
        return {n: v.mean(0, keepdim=True) for n, v in clean.items()}  # mean, mean-corrupted

    def check_nodes(self, nodes) -> list[str]:
        nodes = [nodes] if isinstance(nodes, str) else list(nodes)
        unknown = [n for n in nodes if n not in self._node_set]
        if unknown:
            raise InputError(f"nodes not in this model's layer graph: {unknown[:5]}; layer circuits use "
                             f"{self.nodes[:2]} ... (circuitkit.circuit.layers.layer_nodes)")
        return nodes

    def masked_hooks(self, masks: dict[str, Tensor | float]) -> list:
        """Forward hooks setting each node's output to ``live + mask * (source - live)``."""
        hooks = []
        for node, mask in masks.items():
            def hook(x, hook, node=node, mask=mask):
                return x + mask * (self.source[node].to(x.dtype) - x)
            hooks.append((self.hooks[node], hook))
        return hooks

    def logits(self, ablated) -> Tensor:
        """Logits on the clean prompts with the ``ablated`` nodes reading their source."""
        return _run(self.model, self.tokens, self.masked_hooks({n: 1.0 for n in self.check_nodes(ablated)}))

    def metric(self, keep) -> float:
        """The task metric with every node outside ``keep`` ablated."""
        kept = frozenset(self.check_nodes(keep))
        if kept not in self._cache:
            with torch.no_grad():
                self._cache[kept] = float(self.task.score(self.logits(n for n in self.nodes if n not in kept)))
        return self._cache[kept]

    def normalized(self, value: float) -> float:
        return float(normalized(value, self.metric_full, self.metric_empty))

    def faithfulness(self, keep) -> float:
        return self.normalized(self.metric(keep))

    def mask_gradients(self, alpha: float) -> Tensor:
        """``dm/d mask`` per node (``[n_nodes]``) with every node's mask at ``alpha``."""
        masks = {n: torch.tensor(float(alpha), requires_grad=True) for n in self.nodes}
        with torch.enable_grad():
            metric = self.task.score(_run(self.model, self.tokens, self.masked_hooks(masks)))
            grads = torch.autograd.grad(metric, list(masks.values()), allow_unused=True)
        return torch.stack([torch.zeros(()) if g is None else g.detach().float().cpu() for g in grads])


def score_layers(model, task, method: str = "eap-ig", *, ablation: str = DEFAULT_ABLATION, steps: int = 10,
                 progress: bool = False, evaluator: LayerEvaluator | None = None) -> Scores:
    """Node scores ``[n_nodes]`` over `layer_nodes`, each estimating ``m(node ablated) -
    m(clean)``: ``exact`` (one run per node), ``eap`` (one forward + backward) or ``eap-ig``
    (``steps`` forward + backward passes along the joint ablation mask; see the module).

    Examples:
        >>> import circuitkit as ck
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> scores = ck.score_layers(model, task, method="exact")
        >>> [(label, round(value, 1)) for label, value in zip(scores.labels, scores.values.tolist())]
        [('attn_out.0', -12.0), ('attn_out.1', -11.9)]
    """
    if method not in LAYER_METHODS:
        raise InputError(f"layer-level discovery scores nodes with {LAYER_METHODS}, not {method!r}")
    if method == "eap-ig" and (not isinstance(steps, int) or steps < 1):
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    ev = evaluator or LayerEvaluator(model, task, ablation)
    if method == "exact":
        values = torch.tensor([ev.metric([m for m in ev.nodes if m != n]) - ev.metric_full
                               for n in tqdm(ev.nodes, disable=not progress, desc="exact (layers)")])
    elif method == "eap":
        values = ev.mask_gradients(0.0)
    else:  # midpoint rule on the mask path
        alphas = [(i + 0.5) / steps for i in range(steps)]
        values = sum(ev.mask_gradients(a) for a in tqdm(alphas, disable=not progress, desc="eap-ig (layers)"))
        values = values / steps
    meta = {"n_layers": int(model.cfg.n_layers), "level": "layers", "ablation": ev.ablation}
    if method == "eap-ig":
        meta.update(steps=steps, interpolate="mask")
    return Scores(values.float(), list(ev.nodes), method, task.name, task.metric_name, meta=meta)
