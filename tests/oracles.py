"""Reference procedures the tests hold circuitkit to: TransformerLens's own ``patching`` functions
and slow, obvious recomputations through TransformerLens's forward pass (import as
``from oracles import ...``; a module of its own because several test folders have a ``conftest.py``)."""

from __future__ import annotations

import torch
import transformer_lens.patching as tlp

from circuitkit import names
from circuitkit.ablation import edges as g
from circuitkit.models import backend
from circuitkit.patching.engine import prepare_runs

TL_FUNCTIONS = {
    ("resid_pre", True): tlp.get_act_patch_resid_pre,
    ("resid_mid", True): tlp.get_act_patch_resid_mid,
    ("attn_out", True): tlp.get_act_patch_attn_out,
    ("mlp_out", True): tlp.get_act_patch_mlp_out,
    ("head_out", False): tlp.get_act_patch_attn_head_out_all_pos,
    ("head_out", True): tlp.get_act_patch_attn_head_out_by_pos,
    ("q", False): tlp.get_act_patch_attn_head_q_all_pos,
    ("q", True): tlp.get_act_patch_attn_head_q_by_pos,
    ("k", False): tlp.get_act_patch_attn_head_k_all_pos,
    ("k", True): tlp.get_act_patch_attn_head_k_by_pos,
    ("v", False): tlp.get_act_patch_attn_head_v_all_pos,
    ("v", True): tlp.get_act_patch_attn_head_v_by_pos,
    ("pattern", False): tlp.get_act_patch_attn_head_pattern_all_pos,
    ("pattern", True): tlp.get_act_patch_attn_head_pattern_by_pos,
}


class _Named:
    """Stands in for a hook point in :func:`by_name`."""

    def __init__(self, name: str):
        self.name = name


def by_name(hooks):
    """Forward hooks called with an object whose ``name`` is the name they were registered under: a
    TransformerBridge's hook points carry their own names, not the HookedTransformer aliases."""
    def bind(name, fn):
        return lambda act, hook: fn(act, _Named(name))
    return [(name, bind(name, fn)) for name, fn in hooks]


def transformer_lens_grid(model, task, target, by_pos, direction="denoise"):
    runs = prepare_runs(model, task, direction, [], [])
    with torch.no_grad():
        _, source_cache = model.run_with_cache(runs.source_tokens)
    return TL_FUNCTIONS[(target, by_pos)](model, runs.base_tokens, source_cache, runs.metric())


def slow_path_patching(model, task, sender, receivers, receiver_input, freeze_mlps=False):
    """The obvious procedure, one sender at a time, full forward passes, no batching."""
    runs = prepare_runs(model, task, "noise", [], [])
    with torch.no_grad():
        _, clean = model.run_with_cache(task.clean)
        _, corrupted = model.run_with_cache(task.corrupted)
    s = names.parse_node(sender)

    def freeze(act, hook):
        out = clean[hook.name].clone()
        if hook.name == f"blocks.{s.layer}.attn.hook_z":
            out[:, :, s.head] = corrupted[hook.name][:, :, s.head]
        return out

    hooks = [(f"blocks.{layer}.attn.hook_z", freeze) for layer in range(model.cfg.n_layers)]
    if freeze_mlps:
        hooks += [(f"blocks.{layer}.hook_mlp_out", freeze) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        if receiver_input == "resid":
            return runs.normalized(model.run_with_hooks(task.clean, fwd_hooks=by_name(hooks)))
        nodes = [names.parse_node(r) for r in receivers]
        hook_of = {n: (f"blocks.{n.layer}.hook_mlp_out" if receiver_input == "mlp"
                       else f"blocks.{n.layer}.attn.hook_{receiver_input}") for n in nodes}
        stored = {}

        def capture(act, hook):
            stored[hook.name] = act.clone()

        model.run_with_hooks(task.clean, fwd_hooks=by_name(hooks + [(h, capture) for h in set(hook_of.values())]))
        kv_group = model.cfg.n_heads // (model.cfg.n_key_value_heads or model.cfg.n_heads)
        group = kv_group if receiver_input in ("k", "v") else 1

        def patch(act, hook):
            for n in nodes:
                if hook_of[n] == hook.name:
                    if receiver_input == "mlp":
                        act = stored[hook.name]
                    else:
                        act[:, :, n.head // group] = stored[hook.name][:, :, n.head // group]
            return act

        logits = model.run_with_hooks(task.clean, fwd_hooks=by_name([(h, patch) for h in set(hook_of.values())]))
    return runs.normalized(logits)


def explicit_edge_ablation(model, clean_tokens, source_tokens, edge_name: str):
    """Logits with the one edge ``u -> v`` ablated (u's value on ``source_tokens``), by TransformerLens's
    own forward pass and nothing of circuitkit's graph engine.

    Run A freezes every node at its clean output (each head's ``hook_z``, each ``hook_mlp_out``)
    except u, which takes its source value; whatever the model does between nodes (a post-norm of
    the summed heads, a parallel block, soft-capping) TransformerLens recomputes, so v's input in
    run A is exactly what v reads with only that edge ablated. Run B is the clean run with v's
    input (its head's q/k/v input, its MLP input, or the final residual) replaced by run A's.
    """
    e = names.parse_edge(edge_name)
    parent, child = names.parse_node(e.parent), names.parse_node(e.child)
    n_layers = model.cfg.n_layers
    z_hooks = [names.hook("z", layer) for layer in range(n_layers)]
    mlp_hooks = [] if model.cfg.attn_only else [names.hook("mlp_out", layer) for layer in range(n_layers)]
    input_hook = names.hook("resid_pre", 0)
    wanted = set(z_hooks + mlp_hooks + [input_hook])
    if child.kind == "head":  # its split input; or, on a bridge without those, its projection
        projected = backend.per_head_inputs(model, "the explicit edge ablation") == "projected"
        child_hook = names.hook(e.qkv if projected else f"{e.qkv}_input", child.layer)
    elif child.kind == "mlp":
        child_hook = names.hook("mlp_in", child.layer)
    else:
        child_hook = names.hook("resid_post", n_layers - 1)
    with g.graph_mode(model), torch.no_grad():
        _, clean = model.run_with_cache(clean_tokens, names_filter=lambda n: n in wanted)
        _, source = model.run_with_cache(source_tokens, names_filter=lambda n: n in wanted)

        def freeze(act, hook):
            out = clean[hook.name].clone()
            if parent.kind == "head" and hook.name == names.hook("z", parent.layer):
                out[:, :, parent.head] = source[hook.name][:, :, parent.head]
            elif (parent.kind == "mlp" and hook.name == names.hook("mlp_out", parent.layer)) or (
                    parent.kind == "input" and hook.name == input_hook):
                out = source[hook.name].clone()
            return out

        read = {}

        def capture(act, hook):
            read["input"] = act.clone()

        model.run_with_hooks(clean_tokens, fwd_hooks=by_name([(h, freeze) for h in sorted(wanted)] + [(child_hook, capture)]))

        def replace(act, hook):
            act = act.clone()
            if child.kind == "head":  # (an ungrouped bridge hands keys / values over flat: split per head)
                heads = act.reshape(*act.shape[:2], model.cfg.n_heads, -1)
                heads[:, :, child.head] = read["input"].reshape(heads.shape)[:, :, child.head]
                return heads.reshape(act.shape)
            return read["input"]

        return model.run_with_hooks(clean_tokens, fwd_hooks=[(child_hook, replace)])


def pattern_change_times_gradient(model, task, source, edge_name: str) -> float:
    """AtP*'s QK-fix score the slow, obvious way: ablate the edge (reading ``source``) in a full run,
    read its head's new pattern, and dot the change with dM/d pattern from a clean backward pass."""
    head = names.parse_node(names.parse_edge(edge_name).child)
    hook_name = names.hook("pattern", head.layer)
    kept = {}

    def keep(x, hook):
        x.retain_grad()
        kept["clean"] = x

    with torch.enable_grad():
        logits = model.run_with_hooks(task.clean, fwd_hooks=[(hook_name, keep)])
        (task.per_prompt(logits).sum() / len(task)).backward()

    def grab(x, hook):
        kept["ablated"] = x.detach()

    with model.hooks(fwd_hooks=[(hook_name, grab)]), torch.no_grad():
        g.run_with_edges(model, task.clean, None, source, ablate_edges=[edge_name])
    change = kept["ablated"][:, head.head] - kept["clean"].detach()[:, head.head]
    return float((kept["clean"].grad[:, head.head] * change).sum())


def split_input_edge_matrix(model, task, source, steps: int | None = None) -> torch.Tensor:
    """EAP's ``[n_slots, n_upstream]`` matrix the obvious way (pre-norm models): one forward +
    backward over all prompts with TransformerLens's split q / k / v inputs, every receiver
    input's gradient kept, then ``sum (out_source - out_clean) . grad`` per cell. ``steps``:
    EAP-IG's (inputs), the same with the gradients averaged over ``steps`` runs whose input
    embeddings are ``source + k / steps (clean - source)``, each run taken alone."""
    index = g.graph_index(model)
    clean = g.node_outputs(model, task.clean)
    diff = torch.stack([(source[n] - clean[n]).expand_as(clean[n]) for n in index.upstream], dim=2)  # [b, p, n, d]
    if steps is None:
        return _split_input_run(model, task, index, diff, None)
    shift = (source[names.INPUT] - clean[names.INPUT]).expand_as(clean[names.INPUT])
    runs = [_split_input_run(model, task, index, diff, (1 - k / steps) * shift) for k in range(1, steps + 1)]
    return torch.stack(runs).mean(0)


def _split_input_run(model, task, index, diff, input_shift) -> torch.Tensor:
    kept = {}

    def keep(x, hook):
        x.retain_grad()
        kept[hook.name] = x

    receivers = [names.head_input_hook(layer, q) for layer in range(index.n_layers) for q in names.QKV]
    if index.has_mlp:
        receivers += [g.mlp_in_hook(layer) for layer in range(index.n_layers)]
    receivers.append(g.final_resid_hook(model))
    hooks = by_name([(r, keep) for r in receivers])
    if input_shift is not None:
        hooks.append((g.INPUT_HOOK, lambda x, hook: x + input_shift.to(x.dtype)))
    with g.graph_mode(model), model.hooks(fwd_hooks=hooks), torch.enable_grad():
        task.score(model(task.clean)).backward()
    matrix = torch.zeros(index.shape)
    for layer in range(index.n_layers):
        n_cols = index.n_before_slot_layer(layer)
        for which, q in enumerate(names.QKV):
            row = layer * index.slots_per_layer + which * index.n_heads
            grad = kept[names.head_input_hook(layer, q)].grad
            matrix[row: row + index.n_heads, :n_cols] = torch.einsum("bpnd,bphd->hn", diff[:, :, :n_cols], grad)
        if index.has_mlp:
            n_cols = index.n_before_slot_layer(layer, mlp=True)
            row = layer * index.slots_per_layer + 3 * index.n_heads
            matrix[row, :n_cols] = torch.einsum("bpnd,bpd->n", diff[:, :, :n_cols], kept[g.mlp_in_hook(layer)].grad)
    matrix[-1] = torch.einsum("bpnd,bpd->n", diff, kept[g.final_resid_hook(model)].grad)
    return matrix
