"""The residual-stream edge graph of a HookedTransformer, and runs with edges ablated.

Nodes are ``input`` (token + learned position embedding: ``blocks.0.hook_resid_pre``), every
attention head ``a{L}.h{H}`` (its ``hook_z`` times its ``W_O``: TransformerLens's ``hook_result``
without materialising TransformerLens's slow broadcast product), every MLP ``m{L}`` (``hook_mlp_out``) and
``logits``; edges are `circuitkit.names.all_edges`. With split q/k/v inputs, per-head results
and ``hook_mlp_in`` switched on, every downstream input (a head's q, k or v input, an MLP's input,
the final residual read by ``ln_final``/``unembed``) is exactly the sum of the outputs of the nodes
before it plus biases. Ablating the edge ``u -> v`` replaces, in v's input only, u's live output by
u's output from an ablation source::

    input_v = live_input_v - sum_{ablated u -> v} (out_u_live - out_u_source)

Parallel blocks (GPT-J, GPT-NeoX / Pythia): an MLP reads its block's input, so its parents are
the nodes of earlier layers only.

Post-norm outputs (Gemma-2 / Gemma-3's ``ln1_post``, OLMo-2's post-norm ``ln1``): a layer's heads
reach the residual stream only through ``N(sum_h result_h + b_O)``, one normalisation of their
sum, so a head's contribution to a reader is not a term of its own. There the reader's input is
recomputed from that layer's normalised sum with the ablated senders' outputs swapped in::

    input_v = live_input_v - sum_L [N(pre_L) - N(pre_L - sum_{ablated a_L.h -> v} (result_h_live - result_h_source))]

(``pre_L`` the live sum), which keeps every edge = the model and ablates exactly what an edge
carries; MLP outputs (``hook_mlp_out``, after their own post-norm) stay additive.

Edge masks are dense ``[n_slots, n_upstream]`` matrices (a *slot* is one downstream input, an
*upstream* node is one that writes to the residual stream); `GraphIndex` maps edge names to
matrix cells. A mask may carry a leading batch dimension, so many different ablations run in one
forward pass (each batch row with its own edges ablated).

Position-resolved masks (``by_pos=True``, ``[n_pos, n_slots, n_upstream]``, optionally batched)
ablate an edge at some token positions only: the edge ``u@p -> v@p`` is u's output at position
``p`` in v's input at position ``p`` (the residual stream is per position; attention moves
information across positions inside v), so ``input_v[p] -= sum_u mask[p, v, u] (out_u[p] -
source_u[p])``. Summed over positions the per-position edges are the edge: a mask that is the
same at every position is the per-edge mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import Tensor

from circuitkit import names
from circuitkit.ablation.kinds import check_kind, resample_permutation
from circuitkit.errors import InputError
from circuitkit.models import backend
from circuitkit.models.backend import is_post_norm, model_device
from circuitkit.tokenizers import check_token_ids

# TransformerLens architectures whose QK-norm spans every head's projection (OLMo-2 / OLMo-3 / OLMoE)
_WHOLE_VECTOR_QK_NORM = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


# --- the graph's index ------------------------------------------------------------------------

@dataclass(frozen=True)
class GraphIndex:
    """Where each node and edge of a model's graph lives in the dense edge matrices.

    Upstream nodes (rows of nothing, columns of the matrices) in computation order:
    ``input, a0.h0 .. a0.h{H-1}, m0, a1.h0, ...``. Slots (rows): per layer ``L`` the q inputs of
    its heads, then k, then v, then (if the model has MLPs) ``m{L}``'s input; ``logits`` last.
    """

    n_layers: int
    n_heads: int
    has_mlp: bool
    parallel: bool = False  # attention and MLP both read the block's input (GPT-J / GPT-NeoX)
    upstream: tuple[str, ...] = field(init=False)
    slots: tuple[str, ...] = field(init=False)  # "a1.h0<q>", "m1", "logits"
    edges: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        nodes = names.all_nodes(self.n_layers, self.n_heads, self.has_mlp)
        object.__setattr__(self, "upstream", tuple(nodes[:-1]))
        slots: list[str] = []
        for layer in range(self.n_layers):
            for x in names.QKV:
                slots += [f"{names.head(layer, h)}<{x}>" for h in range(self.n_heads)]
            if self.has_mlp:
                slots.append(names.mlp(layer))
        slots.append(names.LOGITS)
        object.__setattr__(self, "slots", tuple(slots))
        object.__setattr__(self, "edges", tuple(names.all_edges(self.n_layers, self.n_heads, self.has_mlp,
                                                                 self.parallel)))

    @property
    def block(self) -> int:
        """Upstream nodes written per layer."""
        return self.n_heads + int(self.has_mlp)

    @property
    def slots_per_layer(self) -> int:
        return 3 * self.n_heads + int(self.has_mlp)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.slots), len(self.upstream)

    def upstream_index(self, node: str) -> int:
        n = names.parse_node(node)
        if n.pos is not None:
            raise InputError(f"graph nodes carry no position; drop the '@' suffix of {node!r}")
        if n.kind == "input":
            return 0
        names.check_in_model(n, self.n_layers, self.n_heads, self.has_mlp)
        if n.kind == "head":
            return 1 + n.layer * self.block + n.head
        if n.kind == "mlp":
            return 1 + n.layer * self.block + self.n_heads
        raise InputError(f"{node!r} writes nothing into the residual stream, so no edge leaves it")

    def slot_index(self, child: str, qkv: str | None) -> int:
        n = names.parse_node(child)
        if n.kind == "logits":
            return len(self.slots) - 1
        names.check_in_model(n, self.n_layers, self.n_heads, self.has_mlp)
        base = n.layer * self.slots_per_layer
        if n.kind == "head":
            return base + names.QKV.index(qkv) * self.n_heads + n.head
        if n.kind == "mlp":
            return base + 3 * self.n_heads
        raise InputError(f"{child!r} reads nothing from the residual stream, so no edge enters it")

    def n_before_slot_layer(self, layer: int, mlp: bool = False) -> int:
        """How many upstream nodes a layer's heads (or, with ``mlp``, its MLP) can read: the first
        ``n`` columns (an MLP of a parallel block reads no head of its own layer)."""
        return 1 + layer * self.block + (self.n_heads if mlp and not self.parallel else 0)

    def cell(self, edge_name: str) -> tuple[int, int]:
        """``(slot, upstream)`` of an edge; ``ValueError`` naming the fix for unknown edges."""
        cells = _edge_cells(self)
        try:
            return cells[edge_name]
        except KeyError:
            pass
        e = names.parse_edge(edge_name)  # a malformed id raises with the expected form
        self.upstream_index(e.parent)  # a node outside the model raises naming its range
        self.slot_index(e.child, e.qkv)
        raise InputError(
            f"edge {edge_name!r} is not in this model's graph ({self.n_layers} layers x {self.n_heads} heads"
            f"{', with MLPs' if self.has_mlp else ', attention-only'}{', parallel blocks' if self.parallel else ''}): "
            f"{e.parent!r} must exist and come before {e.child!r}"
            f"{' (in a parallel block an MLP reads no head of its own layer)' if self.parallel else ''}; "
            "list valid edges with graph_edges(model)"
        )

    def mask(self, edge_names: Iterable[str], device=None) -> Tensor:
        """A boolean ``[n_slots, n_upstream]`` matrix, True at the given edges."""
        m = torch.zeros(self.shape, dtype=torch.bool)
        rows, cols = [], []
        for e in edge_names:
            r, c = self.cell(e)
            rows.append(r)
            cols.append(c)
        if rows:
            m[torch.tensor(rows), torch.tensor(cols)] = True
        return m.to(device) if device is not None else m

    def position_cell(self, edge_name: str) -> tuple[int | None, int, int]:
        """``(position, slot, upstream)`` of an edge id; position None for an edge without one."""
        base, pos = names.edge_position(edge_name)
        return (pos, *self.cell(base))

    def position_mask(self, edge_names: Iterable[str], n_pos: int, device=None) -> Tensor:
        """A boolean ``[n_pos, n_slots, n_upstream]`` matrix, True at the given edges at their
        positions (``a0.h0@3->a1.h0@3<k>``); an edge id without positions is that edge at every
        position. ``ValueError`` for a position outside ``0..n_pos-1``."""
        m = torch.zeros((n_pos, *self.shape), dtype=torch.bool)
        cells = [self.position_cell(e) for e in edge_names]
        bad = [p for p, _, _ in cells if p is not None and not 0 <= p < n_pos]
        if bad:
            raise InputError(f"edge position {bad[0]} is outside the prompts' {n_pos} positions (0..{n_pos - 1})")
        every = [(r, c) for p, r, c in cells if p is None]
        at = [(p, r, c) for p, r, c in cells if p is not None]
        if every:
            rows, cols = zip(*every, strict=True)
            m[:, torch.tensor(rows), torch.tensor(cols)] = True
        if at:
            ps, rows, cols = zip(*at, strict=True)
            m[torch.tensor(ps), torch.tensor(rows), torch.tensor(cols)] = True
        return m.to(device) if device is not None else m

    def position_edges(self, n_pos: int) -> list[str]:
        """Every edge at every position, position-major (`circuitkit.names.edges_at`): the
        labels of a ``[n_pos, n_slots, n_upstream]`` matrix read at `flat_edge_index`."""
        return names.edges_at(self.edges, n_pos)

    def valid_mask(self, device=None) -> Tensor:
        """True at every cell that is an edge of the graph."""
        return self.mask(self.edges, device)

    def flat_edge_index(self) -> Tensor:
        """``[n_edges]`` flat indices (into ``mask.reshape(-1)``) of `edges`, in order."""
        cells = _edge_cells(self)
        n_up = len(self.upstream)
        return torch.tensor([cells[e][0] * n_up + cells[e][1] for e in self.edges], dtype=torch.long)


@lru_cache(maxsize=16)
def _edge_cells(index: GraphIndex) -> dict[str, tuple[int, int]]:
    cells = {}
    for e_name in index.edges:
        e = names.parse_edge(e_name)
        cells[e_name] = (index.slot_index(e.child, e.qkv), index.upstream_index(e.parent))
    return cells


def graph_index(model) -> GraphIndex:
    """The `GraphIndex` of ``model`` (parallel blocks and post-norm outputs included);
    ``ValueError`` naming the reason and the alternative where the graph cannot be built."""
    method = "the edge graph (EAP, EAP-IG, exact edge patching, ACDC, edge pruning, discover)"
    backend.require(model, ("heads", "additive"), method)
    backend.per_head_inputs(model, method)
    cfg = model.cfg
    kv_heads = getattr(cfg, "n_key_value_heads", None)
    if whole_vector_qk_norm(model) and kv_heads is not None and kv_heads < cfg.n_heads:
        raise InputError(
            f"model {cfg.model_name!r} ({backend.architecture(model)}) normalises its keys over all key/value heads "
            "at once, and grouped-query attention: the edge graph gives each query head its own key input "
            "(TransformerLens's ungroup_grouped_query_attention), which that norm cannot take; use activation "
            "patching, path patching, attribution_patching or a circuit of whole layers (discover(level='layers'), "
            "--level layers) on this model instead"
        )
    return _shared_index(cfg.n_layers, cfg.n_heads, not cfg.attn_only, bool(getattr(cfg, "parallel_attn_mlp", False)))


@lru_cache(maxsize=32)
def _shared_index(n_layers: int, n_heads: int, has_mlp: bool, parallel: bool) -> GraphIndex:
    # one index per shape: building its edge names takes about 60 ms at GPT-2 small's 32,491 edges,
    # and every method call asks for it; the index is frozen, so sharing it is safe
    return GraphIndex(n_layers, n_heads, has_mlp, parallel)


def attn_output_norm(model, layer: int):
    """The normalisation a layer applies to its heads' summed output before the residual stream
    (Gemma-2 / Gemma-3's ``ln1_post``, OLMo-2 / OLMo-3's post-norm ``ln1``), or None."""
    block = model.blocks[layer]
    if backend.is_bridge(model):
        # the bridge names a norm on the attention output ln1_post, whatever the family; the Hugging
        # Face module itself is returned, so recomputing it inside a hook fires no hook point again
        norm = getattr(block, "ln1_post", None)
        return None if norm is None else norm.original_component
    if getattr(model.cfg, "use_normalization_before_and_after", False):
        return block.ln1_post
    if is_post_norm(model):
        return block.ln1
    return None


def attn_pre_norm_sum(model, layer: int, results: Tensor) -> Tensor:
    """``sum_h result_h + b_O`` (``[batch, pos, d_model]``) from per-head results ``[batch, pos, n_heads, d_model]``."""
    return results.sum(2) + backend.head_output_bias(model, layer).to(results.dtype)


def post_norm_head_diffs(model, layer: int, pre: Tensor, diff: Tensor, linear: bool) -> Tensor:
    """What replacing each head's result by ``result + diff`` changes in what a post-norm layer adds
    to the residual stream, one head at a time (``[batch, pos, n_heads, d_model]``).

    ``pre``: the layer's summed head output before its norm (``[batch, pos, d_model]``, see
    `attn_pre_norm_sum`); ``diff``: ``[batch, pos, n_heads, d_model]``. ``linear``: the
    first-order change ``J_N(pre) diff`` (what a gradient sees: EAP's term); otherwise the exact
    ``N(pre + diff) - N(pre)``.
    """
    norm = attn_output_norm(model, layer)
    pre = pre.detach()[:, :, None].expand_as(diff)
    with torch.enable_grad():
        if linear:
            return torch.func.jvp(norm, (pre.contiguous(),), (diff.contiguous(),))[1].detach()
    with torch.no_grad():
        return norm(pre + diff) - norm(pre)


def whole_vector_qk_norm(model) -> bool:
    """Whether the model's QK-norm spans every head's projection at once (TransformerLens's OLMo-2 /
    OLMo-3 / OLMoE blocks), so one head's query depends on the other heads' query inputs."""
    return backend.architecture(model) in _WHOLE_VECTOR_QK_NORM


@contextmanager
def graph_mode(model) -> Iterator[None]:
    """Switch on the hooks the graph reads (split q/k/v inputs, ``hook_mlp_in``,
    ungrouped GQA keys/values so each query head has its own k/v input); restore them after."""
    cfg = model.cfg
    # a bridge without split inputs reaches each head's input through its projections instead
    flags = {"use_split_qkv_input": True} if backend.per_head_inputs(model, "the edge graph") == "split" else {}
    if not cfg.attn_only:
        flags["use_hook_mlp_in"] = True
    if getattr(cfg, "n_key_value_heads", None) is not None:
        flags["ungroup_grouped_query_attention"] = True
    with backend.hook_flags(model, **flags):
        yield


# --- hook names -------------------------------------------------------------------------------

INPUT_HOOK = names.hook("resid_pre", 0)


def result_hook(layer: int) -> str:
    """The hook whose value gives a layer's head outputs (``hook_z``; see `head_results`)."""
    return names.output_hook(names.head(layer, 0))


def head_results(model, layer: int, z: Tensor) -> Tensor:
    """``[batch, pos, n_heads, d_model]``: what each head of ``layer`` writes (``z @ W_O`` per head)."""
    w_o = backend.head_output_weights(model, layer)  # [n_heads, d_head, d_model]
    return torch.einsum("bphe,hed->bphd", z, w_o.to(z.dtype))


def mlp_in_hook(layer: int) -> str:
    return names.hook("mlp_in", layer)


def final_resid_hook(model) -> str:
    return names.hook("resid_post", model.cfg.n_layers - 1)


def output_hooks(index: GraphIndex) -> list[str]:
    hooks = [INPUT_HOOK]
    for layer in range(index.n_layers):
        hooks.append(result_hook(layer))
        if index.has_mlp:
            hooks.append(names.output_hook(names.mlp(layer)))
    return hooks


# --- public API -------------------------------------------------------------------------------

def graph_edges(model) -> list[str]:
    """Every edge of ``model``'s graph (`circuitkit.names.all_edges`)."""
    return list(graph_index(model).edges)


def graph_nodes(model) -> list[str]:
    """Every node of ``model``'s graph: ``input``, heads, MLPs, ``logits``."""
    index = graph_index(model)
    return [*index.upstream, names.LOGITS]


def node_outputs(model, tokens: Tensor) -> dict[str, Tensor]:
    """What each node writes into the residual stream on ``tokens``.

    Returns node id -> ``[batch, pos, d_model]`` (``input`` = embeddings, incl. learned position
    embeddings; a head = its ``hook_result`` value, i.e. ``z @ W_O``; an MLP = ``hook_mlp_out``). No gradients.
    """
    with torch.no_grad():  # each head's z @ W_O: no history through the weights
        return split_outputs(model, graph_index(model), output_acts(model, tokens))


def output_acts(model, tokens: Tensor) -> dict[str, Tensor]:
    """The values of the output hooks (`output_hooks`: the embeddings, each layer's ``hook_z``,
    each MLP's output) on ``tokens``: what `node_outputs` splits into one output per node. No gradients."""
    wanted = set(output_hooks(graph_index(model)))
    tokens = check_token_ids(model, tokens)
    with torch.no_grad():  # hook_z, hook_mlp_out and the embeddings need no split q / k / v inputs
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
        return {n: cache[n] for n in wanted}


def split_outputs(model, index: GraphIndex, acts: dict[str, Tensor]) -> dict[str, Tensor]:
    """Node id -> ``[batch, pos, d_model]`` from the cached output hooks (`output_hooks`)."""
    out = {names.INPUT: acts[INPUT_HOOK]}
    for layer in range(index.n_layers):
        result = head_results(model, layer, acts[result_hook(layer)])
        for h in range(index.n_heads):
            out[names.head(layer, h)] = result[:, :, h]
        if index.has_mlp:
            out[names.mlp(layer)] = acts[names.output_hook(names.mlp(layer))]
    return out


def ablation_source(model, task, kind: str = "corrupted", seed: int = 0) -> dict[str, Tensor]:
    """Node outputs that ablated edges read instead of the live ones.

    ``kind``: ``"corrupted"`` (outputs on ``task.corrupted``, ``[batch, pos, d_model]``),
    ``"mean"`` (mean over the clean prompts at each position, ``[1, pos, d_model]``),
    ``"mean-corrupted"`` (mean over the corrupted prompts at each position, ``[1, pos, d_model]``),
    ``"resample"`` (each prompt gets another clean prompt's outputs, a seeded derangement,
    ``[batch, pos, d_model]``), ``"zero"`` (zeros, ``[1, pos, d_model]``).
    """
    task.check_model(model)
    return batch_source(model, task, kind, seed, len(task))(torch.arange(len(task)))


def batch_source(model, task, kind: str, seed: int, batch_size: int):
    """``idx -> source outputs of those prompts``: `ablation_source` restricted to rows
    ``idx``, computed batch by batch so that no ``[n_prompts, pos, d_model]`` block per node need
    be held. A mean over all prompts is summed ``batch_size`` prompts at a time, once."""
    check_kind(kind, what="ablation kind")
    device = model_device(model)
    n = len(task)
    if kind == "corrupted":
        return PromptSource(model, lambda idx: task.corrupted[idx.to(task.corrupted.device)].to(device))
    if kind == "resample":
        perm = resample_permutation(n, seed=seed, prompts="clean")
        return PromptSource(model, lambda idx: task.clean[perm[idx.cpu()].to(task.clean.device)].to(device))
    if kind == "zero":
        zeros = {k: torch.zeros_like(v) for k, v in node_outputs(model, task.clean[:1].to(device)).items()}
        return lambda idx: zeros
    prompts = task.corrupted if kind == "mean-corrupted" else task.clean  # "mean": the clean prompts'
    total: dict[str, Tensor] = {}
    for start in range(0, n, batch_size):
        for k, v in node_outputs(model, prompts[start:start + batch_size].to(device)).items():
            total[k] = total.get(k, 0) + v.sum(0, keepdim=True)
    mean = {k: v / n for k, v in total.items()}
    return lambda idx: mean


class PromptSource:
    """``idx -> source outputs of those prompts`` where each prompt has its own source run
    (corrupted, resampled): a `batch_source`. ``acts(idx)`` gives that run's output hooks' values
    instead (`output_acts`), for a caller that writes the heads' outputs where it needs them
    rather than through one ``[batch, pos, d_model]`` tensor per node."""

    def __init__(self, model, prompts_of) -> None:
        self.model, self.prompts_of = model, prompts_of

    def __call__(self, idx: Tensor) -> dict[str, Tensor]:
        return node_outputs(self.model, self.prompts_of(idx))

    def acts(self, idx: Tensor) -> dict[str, Tensor]:
        return output_acts(self.model, self.prompts_of(idx))


def run_with_edges(
    model,
    tokens: Tensor,
    keep_edges: Iterable[str] | None,
    source: dict[str, Tensor],
    ablate_edges: Iterable[str] | None = None,
) -> Tensor:
    """Logits ``[batch, pos, vocab]`` of ``model`` on ``tokens`` with some edges ablated.

    Every edge NOT in ``keep_edges`` reads its parent's ``source`` output (see
    `ablation_source`); alternatively pass ``keep_edges=None`` and ``ablate_edges`` to
    ablate only those. Unknown edge names raise ``ValueError``. Gradients flow if enabled.
    Position-resolved edge ids (``a0.h0@3->a1.h0@3<k>``, `circuitkit.names.edge_at`) keep or
    ablate an edge at that position only (an id without positions among them: at every position),
    through a ``[pos, n_slots, n_upstream]`` mask (`run_with_mask` with ``by_pos``).

    Examples:
        >>> import torch
        >>> import circuitkit as ck
        >>> from circuitkit.ablation import ablation_source
        >>> model = ck.load_model("zoo:induction-handbuilt")
        >>> task = ck.zoo_task("induction-handbuilt", model)
        >>> source = ablation_source(model, task, "mean")  # what an ablated edge carries
        >>> circuit = ck.reference_circuit("induction-handbuilt")
        >>> with torch.no_grad():
        ...     kept = ck.run_with_edges(model, task.clean, circuit.edges, source)  # all others ablated
        ...     cut = ck.run_with_edges(model, task.clean, None, source, ablate_edges=["a0.h0->a1.h0<k>"])
        >>> round(task.score(kept).item(), 2), round(task.score(cut).item(), 2)
        (12.0, 0.0)
    """
    if (keep_edges is None) == (ablate_edges is None):
        raise InputError("give exactly one of keep_edges (ablate the rest) or ablate_edges (keep the rest)")
    index = graph_index(model)
    device = model_device(model)
    given = keep_edges if keep_edges is not None else ablate_edges
    listed = [given] if isinstance(given, str) else list(given)
    by_pos = any("@" in e for e in listed)  # a position suffix (names.edge_at); parsed by position_mask
    if by_pos:  # position-resolved edges: a [pos, slots, upstream] mask
        n_pos = check_token_ids(model, tokens).shape[1]
        chosen = index.position_mask(listed, n_pos)
        mask = index.valid_mask()[None] & ~chosen if keep_edges is not None else chosen
    else:
        chosen = index.mask(listed)
        mask = index.valid_mask() & ~chosen if keep_edges is not None else chosen
    return run_with_mask(model, tokens, mask.to(device), source, by_pos=by_pos)


def run_with_mask(model, tokens: Tensor, ablate: Tensor, source: dict[str, Tensor], by_pos: bool = False) -> Tensor:
    """Logits with the edges where ``ablate`` is nonzero ablated.

    ``ablate``: ``[n_slots, n_upstream]`` (one ablation for the whole batch) or
    ``[batch, n_slots, n_upstream]`` (each row of ``tokens`` its own); fractional values
    interpolate between live (0) and source (1). ``by_pos``: the mask is position-resolved,
    ``[pos, n_slots, n_upstream]`` or ``[batch, pos, n_slots, n_upstream]``, ``pos`` the
    tokens' length (``mask[p]`` ablates the edges at position ``p`` only).
    """
    index = graph_index(model)
    tokens = check_token_ids(model, tokens)
    lead = 1 if by_pos else 0  # the position dimension before the matrix
    form = "[pos, n_slots, n_upstream]" if by_pos else "[n_slots, n_upstream]"
    if ablate.shape[-2:] != index.shape or ablate.ndim not in (2 + lead, 3 + lead):
        raise InputError(f"edge mask must be {form} = {[tokens.shape[1]] * lead + list(index.shape)} (optionally "
                         f"with a leading batch dimension), got {list(ablate.shape)}"
                         + ("" if by_pos or ablate.ndim != 4 else "; pass by_pos=True for a position-resolved mask"))
    if by_pos and ablate.shape[-3] != tokens.shape[1]:
        raise InputError(f"a position-resolved edge mask needs one matrix per position: {ablate.shape[-3]} for "
                         f"prompts of {tokens.shape[1]} tokens")
    if ablate.ndim == 3 + lead and ablate.shape[0] != tokens.shape[0]:
        raise InputError(f"a batched edge mask needs one row per prompt: {ablate.shape[0]} masks for {tokens.shape[0]} prompts")
    _check_source(index, source, tokens)
    hooks = _ablation_hooks(model, index, ablate.to(model_device(model)).float(), source, by_pos)
    with graph_mode(model), model.hooks(fwd_hooks=hooks):
        return model(tokens)


# --- the hooks --------------------------------------------------------------------------------

def _ablation_hooks(model, index: GraphIndex, ablate: Tensor, source: dict[str, Tensor], by_pos: bool = False) -> list:
    """Forward hooks that record ``live - source`` per upstream block and correct each slot.

    Upstream blocks: ``input`` (1 node), each layer's heads (H nodes), each MLP (1 node); each
    holds a ``[batch, pos, n, d_model]`` difference. A slot group (a layer's q, k or v inputs,
    an MLP input, the final residual) subtracts ``einsum(diff_block, mask_block)`` over the blocks
    before it, skipping blocks with nothing ablated (sparse ablations stay cheap).
    """
    # the mask's axes before [slots, upstream]: batch and / or position
    eq = {(False, False): "bpnd,hn->bphd", (True, False): "bpnd,bhn->bphd",
          (False, True): "bpnd,phn->bphd", (True, True): "bpnd,bphn->bphd"}[(ablate.ndim == 3 + by_pos, by_pos)]
    # (first upstream column, diff or None, post-norm of the block or None, its live pre-norm sum and
    # the norm of that, or None)
    diffs: list[tuple[int, Tensor | None, object, tuple[Tensor, Tensor] | None]] = []
    # Blocks with nothing ablated are skipped, unless the mask's own gradient is wanted (it is
    # not 0 where the mask is).
    dense = ablate.requires_grad
    used_cols = ablate.reshape(-1, *index.shape).amax(0).amax(0) > 0  # upstream nodes with ablated edges
    if dense:
        used_cols = torch.ones_like(used_cols)

    def record(start: int, live: Tensor | None, node_names: list[str], z_layer: int | None = None) -> None:
        if not bool(used_cols[start:start + len(node_names)].any()):
            diffs.append((start, None, None, None))
            return
        norm = pre = None
        if z_layer is not None:
            live = head_results(model, z_layer, live)
            norm = attn_output_norm(model, z_layer)
            if norm is not None:
                summed = attn_pre_norm_sum(model, z_layer, live)[:, :, None]
                pre = (summed, norm(summed))
        src = torch.stack([source[n] for n in node_names], dim=2).to(live.dtype)
        diffs.append((start, live - src, norm, pre))

    def correction(rows: slice, x: Tensor, n_cols: int) -> Tensor | None:
        total = None
        for start, diff, norm, pre in diffs:
            if diff is None or start >= n_cols:
                continue
            width = diff.shape[2]
            m = ablate[..., rows, start:start + width]
            if not dense and not bool(m.any()):
                continue
            term = torch.einsum(eq, diff, m.to(diff.dtype))
            if norm is not None:  # what the layer adds, live minus with the ablated senders swapped in
                summed, normed = pre
                term = normed - norm(summed - term)
            total = term if total is None else total + term
        return total

    def input_hook(x, hook):
        record(0, x[:, :, None], [names.INPUT])

    def result_hook_fn(x, hook, layer):
        record(1 + layer * index.block, x, [names.head(layer, h) for h in range(index.n_heads)], z_layer=layer)

    def mlp_out_fn(x, hook, layer):
        record(1 + layer * index.block + index.n_heads, x[:, :, None], [names.mlp(layer)])

    def qkv_in_fn(x, hook, layer, which):
        base = layer * index.slots_per_layer + which * index.n_heads
        corr = correction(slice(base, base + index.n_heads), x, index.n_before_slot_layer(layer))
        return x if corr is None else x - corr.to(x.dtype)

    # Without split inputs, a head's moved input is projected as the head projects its own (norm,
    # then its W_Q / W_K / W_V) and the difference added to its hook_q / k / v value.
    layer_inputs: dict[int, Tensor] = {}

    def resid_fn(x, hook, layer):
        layer_inputs[layer] = x

    def qkv_projected_fn(x, hook, layer, which):
        base = layer * index.slots_per_layer + which * index.n_heads
        corr = correction(slice(base, base + index.n_heads), x, index.n_before_slot_layer(layer))
        if corr is None:
            return x
        live = layer_inputs[layer][:, :, None].expand_as(corr)
        moved = backend.head_input_projection(model, layer, which, live - corr.to(live.dtype))
        change = (moved - backend.head_input_projection(model, layer, which, live)).to(x.dtype)
        # an ungrouped bridge may hand keys / values over flat ([batch, pos, heads * d_head])
        return x + change.reshape(x.shape)

    def mlp_in_fn(x, hook, layer):
        row = layer * index.slots_per_layer + 3 * index.n_heads
        corr = correction(slice(row, row + 1), x, index.n_before_slot_layer(layer, mlp=True))
        return x if corr is None else x - corr[:, :, 0].to(x.dtype)

    def final_fn(x, hook):
        row = len(index.slots) - 1
        corr = correction(slice(row, row + 1), x, len(index.upstream))
        return x if corr is None else x - corr[:, :, 0].to(x.dtype)

    projected = backend.per_head_inputs(model, "the edge graph") == "projected"
    hooks: list = [(INPUT_HOOK, input_hook)]
    for layer in range(index.n_layers):
        if projected:
            hooks.append((names.hook("resid_pre", layer), _bind(resid_fn, layer=layer)))
        for which, x in enumerate(names.QKV):
            if projected:
                hooks.append((names.hook(x, layer), _bind(qkv_projected_fn, layer=layer, which=which)))
            else:
                hooks.append((names.head_input_hook(layer, x), _bind(qkv_in_fn, layer=layer, which=which)))
        hooks.append((result_hook(layer), _bind(result_hook_fn, layer=layer)))
        if index.has_mlp:
            hooks.append((mlp_in_hook(layer), _bind(mlp_in_fn, layer=layer)))
            hooks.append((names.output_hook(names.mlp(layer)), _bind(mlp_out_fn, layer=layer)))
    hooks.append((final_resid_hook(model), final_fn))
    return hooks


def _bind(fn, **kwargs):
    def hook(x, hook):
        return fn(x, hook, **kwargs)

    return hook


# --- helpers ----------------------------------------------------------------------------------

def _check_source(index: GraphIndex, source: dict[str, Tensor], tokens: Tensor) -> None:
    missing = [n for n in index.upstream if n not in source]
    if missing:
        raise InputError(f"ablation source lacks node outputs for {missing[:4]}; build it with ablation_source(model, task)")
    batch, pos = tokens.shape
    ref = source[names.INPUT]
    if ref.ndim != 3 or ref.shape[1] != pos or ref.shape[0] not in (1, batch):
        raise InputError(
            f"ablation source has shape {list(ref.shape)} per node but the tokens are [{batch}, {pos}]: it "
            f"must be [1 or {batch}, {pos}, d_model]; build it from prompts of the same length and count"
        )
