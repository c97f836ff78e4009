"""The model layer: the one module that knows which TransformerLens model class a method talks to.

circuitkit runs on two kinds of TransformerLens model:

* ``HookedTransformer`` — TransformerLens's own re-implementation of each architecture it converts
  (the zoo, GPT-2, Pythia, Llama, Gemma-2/3, ...), with ``start_at_layer``, its KV cache and
  per-head input hooks;
* ``TransformerBridge`` (``transformer_lens.model_bridge``) — the Hugging Face module itself with
  hook points around its parts, booting the families TransformerLens 3 cannot convert (Gemma-4,
  Llama-4, DeepSeek-V3, SmolLM3, Granite, gpt-oss, Falcon-H1, ...) and the only model class of
  TransformerLens 4.

Methods never test a model's class: they ask this module for what they need (the hook names every
method uses, the embedding, a run from a layer's residual stream, the per-head input hooks, the
head output weights), and each function here answers for both classes. A bridge gets
TransformerLens's compatibility hook names (``blocks.L.hook_resid_pre``, ``blocks.L.attn.hook_z``,
``blocks.L.hook_q_input`` ...) from :func:`prepare` — without weight processing, so its numbers
stay the Hugging Face model's. Where a bridge lacks a fast path (starting at a layer, the
prefix KV cache), the slower equivalent runs and gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor

from circuitkit import names

Backend = Literal["hooked", "bridge"]
BACKENDS = ("hooked", "bridge")

# HookedTransformer config flags the graph and gradient runs switch; a bridge sets the first two
# through its own setters (they rebuild its hook wiring), and has no ungrouping of its own.
_SETTERS = {"use_split_qkv_input": "set_use_split_qkv_input", "use_hook_mlp_in": "set_use_hook_mlp_in"}


def _bridge_class():
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # a TransformerLens without the bridge
        return None
    return TransformerBridge


def is_bridge(model) -> bool:
    """Whether ``model`` is a TransformerLens ``TransformerBridge``."""
    cls = _bridge_class()
    return cls is not None and isinstance(model, cls)


def backend(model) -> Backend:
    """``"bridge"`` for a ``TransformerBridge``, ``"hooked"`` for a ``HookedTransformer``."""
    return "bridge" if is_bridge(model) else "hooked"


def architecture(model) -> str | None:
    """The Hugging Face architecture name (``"LlamaForCausalLM"``), or None for a model built from a
    config alone (the zoo)."""
    cfg = model.cfg
    return getattr(cfg, "original_architecture", None) or getattr(cfg, "architecture", None)


def prepare(model):
    """``model`` ready for every method: a bridge gets TransformerLens's compatibility hook names
    (``blocks.L.hook_resid_pre`` ...) once, with its weights left as they are (no folding or
    centring, so its outputs stay the Hugging Face model's); anything else is returned as is."""
    if is_bridge(model) and not getattr(model, "compatibility_mode", False):
        model.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    return model


# --- running --------------------------------------------------------------------------------------

def embed(model, tokens: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(residual at layer 0, shortformer position embedding or None, attention mask or None)``
    of ``tokens`` (``[batch, pos]``; the residual ``[batch, pos, d_model]``)."""
    if is_bridge(model):
        return model(tokens, stop_at_layer=0), None, None
    resid, _, shortformer, attention_mask = model.input_to_embed(tokens)
    return resid, shortformer, attention_mask


def starts_at_layer(model) -> bool:
    """Whether a run can start from a layer's residual stream without computing the layers below
    (``HookedTransformer``'s ``start_at_layer``); a bridge runs them and overwrites the residual."""
    return not is_bridge(model)


def keeps_prefix_cache(model) -> bool:
    """Whether runs can reuse a prefix of positions through TransformerLens's KV cache (a
    ``HookedTransformer`` with causal attention, learned or rotary positions and no local windows)."""
    cfg = model.cfg
    return (not is_bridge(model) and cfg.attention_dir == "causal"
            and cfg.positional_embedding_type in ("standard", "rotary") and not getattr(cfg, "use_local_attn", False))


def run_from_layer(model, resid: Tensor, start: int, tokens: Tensor, stop_at_layer: int | None = None,
                   fwd_hooks: Sequence[tuple[str, Callable]] = (), **kwargs) -> Tensor:
    """The model run from layer ``start``'s residual stream ``resid`` (``[rows, pos, d_model]``) with
    ``fwd_hooks``: logits, or the residual stream before layer ``stop_at_layer`` (``n_layers``: after
    the last block, before the final norm).

    ``tokens`` (``[rows, pos]``) are the run's tokens: a bridge computes the layers below ``start``
    from them and replaces their result, and reads them wherever its architecture does beyond the
    residual stream (per-layer embeddings). ``kwargs`` (a KV cache, masks) go to a
    ``HookedTransformer`` only.
    """
    if not is_bridge(model):
        return model.run_with_hooks(resid, start_at_layer=start, stop_at_layer=stop_at_layer,
                                    fwd_hooks=list(fwd_hooks), **kwargs)
    if kwargs:
        raise ValueError(f"a TransformerBridge run takes no {sorted(kwargs)}; those are HookedTransformer fast paths")
    if tokens.shape[:2] != resid.shape[:2]:
        raise ValueError(f"tokens {list(tokens.shape)} do not match the residual stream {list(resid.shape)}")
    # the layers below run and their result is replaced (hooks on that hook point see ``resid``)
    hooks = [(names.hook("resid_pre", start), lambda x, hook: resid.to(x.dtype)), *fwd_hooks]
    return run_bridge(model, tokens, hooks, stop_at_layer)


def run_bridge(model, tokens: Tensor, fwd_hooks: Sequence[tuple[str, Callable]], stop_at_layer: int | None) -> Tensor:
    """A bridge run of ``tokens`` with ``fwd_hooks``, stopping before layer ``stop_at_layer`` as a
    ``HookedTransformer`` does (``n_layers``: the residual stream after the last block)."""
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    hooks = bridge_replacing_hooks(fwd_hooks)
    n_layers = model.cfg.n_layers
    if stop_at_layer is not None and stop_at_layer >= n_layers:
        def stop(x, hook):  # the bridge returns what the exception carries, as its own stop does
            raise StopAtLayerException(x)
        hooks.append((names.hook("resid_post", n_layers - 1), stop))
        stop_at_layer = None
    return model.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=stop_at_layer)


def value_at(model, tokens: Tensor, hook_name: str, fwd_hooks: Sequence[tuple[str, Callable]] = ()) -> Tensor:
    """The value at ``hook_name`` in a run of ``tokens`` with ``fwd_hooks`` (after them), the run
    stopped there (nothing after that hook point is computed)."""
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    captured: dict[str, Tensor] = {}

    def stop(x, hook):
        captured["value"] = x
        raise StopAtLayerException(x)

    hooks = [*fwd_hooks, (hook_name, stop)]
    try:
        if is_bridge(model):
            run_bridge(model, tokens, hooks, None)
        else:
            model.run_with_hooks(tokens, fwd_hooks=hooks)
    except StopAtLayerException:  # a HookedTransformer lets it through
        pass
    return captured["value"]


def bridge_replacing_hooks(fwd_hooks: Sequence[tuple[str, Callable]]) -> list[tuple[str, Callable]]:
    """Forward hooks for a bridge that replace activations as on a ``HookedTransformer``.

    A bridge's ``hook_resid_mid`` is the input of ``ln2`` alone: a value returned there reaches the
    MLP but not the residual stream. A hook on it is moved to ``hook_attn_out``, where it sees
    ``resid_pre + attn_out`` and what it returns becomes the residual stream (MLP input included),
    as ``HookedTransformer``'s ``hook_resid_mid`` does.
    """
    out: list[tuple[str, Callable]] = []
    for name, fn in fwd_hooks:
        parts = name.split(".")
        if len(parts) != 3 or parts[2] != "hook_resid_mid":
            out.append((name, fn))
            continue
        layer = int(parts[1])
        live: dict[str, Tensor] = {}

        def keep(x, hook, live=live):
            live["resid_pre"] = x

        def as_resid_mid(x, hook, fn=fn, live=live):
            mid = live["resid_pre"] + x
            new = fn(mid, hook=hook)
            return x if new is None else new - live["resid_pre"]

        out += [(names.hook("resid_pre", layer), keep), (names.hook("attn_out", layer), as_resid_mid)]
    return out


# --- weights ----------------------------------------------------------------------------------------

def head_output_weights(model, layer: int) -> Tensor:
    """``W_O`` of ``layer``'s heads, ``[n_heads, d_head, d_model]``."""
    return model.blocks[layer].attn.W_O


def head_output_bias(model, layer: int) -> Tensor:
    """``b_O`` of ``layer``'s attention (``[d_model]``; zeros where the projection has no bias)."""
    bias = model.blocks[layer].attn.b_O
    if bias is None:
        w = head_output_weights(model, layer)
        return torch.zeros(w.shape[-1], dtype=w.dtype, device=w.device)
    return bias


# --- hook flags ---------------------------------------------------------------------------------

@contextmanager
def hook_flags(model, **flags: bool) -> Iterator[None]:
    """Switch TransformerLens hook flags (``use_split_qkv_input``, ``use_hook_mlp_in``,
    ``ungroup_grouped_query_attention``) for the duration; restore them after. A bridge sets the
    first two through its own setters and is ungrouped by :func:`_ungrouped_bridge`."""
    cfg = model.cfg
    bridge = is_bridge(model)
    ungroup = bridge and flags.pop("ungroup_grouped_query_attention", False)
    old = {k: bool(getattr(cfg, k, False)) for k in flags}

    def apply(values: dict[str, bool]) -> None:
        for k, v in values.items():
            if bridge:
                if k in _SETTERS and bool(getattr(cfg, k, False)) != v:
                    getattr(model, _SETTERS[k])(v)
            else:
                setattr(cfg, k, v)

    apply(flags)
    try:
        with _ungrouped_bridge(model) if ungroup else _nothing():
            yield
    finally:
        apply(old)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def grouped_kv_heads(model) -> int | None:
    """The number of key/value heads where fewer than the query heads share them (grouped-query or
    multi-query attention), else None."""
    cfg = model.cfg
    kv = getattr(cfg, "n_key_value_heads", None)
    return kv if kv is not None and kv < cfg.n_heads else None


def can_ungroup(model) -> bool:
    """Whether each query head can get its own key and value input: always for a
    ``HookedTransformer`` (TransformerLens's ``ungroup_grouped_query_attention``); for a bridge where
    its attention projects keys and values with plain linear layers that :func:`_ungrouped_bridge`
    can repeat per query head."""
    if not is_bridge(model) or grouped_kv_heads(model) is None:
        return True
    return all(_kv_projections(block.attn) is not None for block in model.blocks)


def _kv_projections(attn):
    """``(k linear, v linear, Hugging Face attention)`` of a bridge attention whose keys and values
    come from plain ``nn.Linear`` projections and are repeated per query head by
    ``num_key_value_groups``, else None."""
    try:
        k, v, hf = attn.k.original_component, attn.v.original_component, attn.original_component
    except AttributeError:
        return None
    if not (isinstance(k, torch.nn.Linear) and isinstance(v, torch.nn.Linear)
            and getattr(hf, "num_key_value_groups", None) is not None):
        return None
    return k, v, hf


@contextmanager
def _ungrouped_bridge(model) -> Iterator[None]:
    """A bridge whose grouped key/value projections are repeated per query head for the duration,
    so each query head reads its own ``hook_k_input`` / ``hook_v_input`` (as TransformerLens's
    ``ungroup_grouped_query_attention`` does for a ``HookedTransformer``). The function is
    unchanged: every query head of a group gets the same weights its group had."""
    kv = grouped_kv_heads(model)
    if kv is None or getattr(model, "_circuitkit_ungrouped", False):
        yield
        return
    if not can_ungroup(model):
        raise ValueError(
            f"model {model.cfg.model_name!r} ({architecture(model)}): its attention shares keys and values "
            f"between query heads ({model.cfg.n_heads} query, {kv} key/value heads) through projections "
            "circuitkit cannot repeat per query head, so edges into keys and values cannot be told apart by "
            "query head; use activation patching, path patching or attribution_patching on this model")
    group = model.cfg.n_heads // kv
    saved = []
    configs = {id(c): c for c in [model.cfg, *(getattr(b.attn, "config", None) for b in model.blocks)] if c is not None}
    with torch.no_grad():
        for block in model.blocks:
            k, v, hf = _kv_projections(block.attn)
            saved.append((hf, hf.num_key_value_groups, [(lin, lin.weight, lin.bias) for lin in (k, v)]))
            for lin in (k, v):
                lin.weight = torch.nn.Parameter(_repeat_heads(lin.weight, kv, group), lin.weight.requires_grad)
                if lin.bias is not None:
                    lin.bias = torch.nn.Parameter(_repeat_heads(lin.bias, kv, group), lin.bias.requires_grad)
            hf.num_key_value_groups = 1
    old_kv = {key: c.n_key_value_heads for key, c in configs.items()}
    for c in configs.values():
        c.n_key_value_heads = model.cfg.n_heads
    model._circuitkit_ungrouped = True
    try:
        yield
    finally:
        model._circuitkit_ungrouped = False
        for key, c in configs.items():
            c.n_key_value_heads = old_kv[key]
        for hf, groups, lins in saved:
            hf.num_key_value_groups = groups
            for lin, weight, bias in lins:
                lin.weight, lin.bias = weight, bias


def _repeat_heads(x: Tensor, n_kv: int, group: int) -> Tensor:
    """Rows of ``x`` (``[n_kv * d_head, ...]``) repeated per query head: ``[n_kv * group * d_head, ...]``."""
    per_head = x.reshape(n_kv, -1, *x.shape[1:])
    return per_head.repeat_interleave(group, dim=0).reshape(-1, *x.shape[1:]).contiguous()


def run_with_cache(model, tokens: Tensor, wanted: set[str], stop_at_layer: int | None = None) -> tuple[Tensor, dict]:
    """``model.run_with_cache(tokens)`` caching only the hooks in ``wanted``; ``stop_at_layer`` as
    :func:`run_from_layer`'s (a bridge stops after its last block too). Returns ``(output, cache)``."""
    if not is_bridge(model):
        return model.run_with_cache(tokens, names_filter=lambda n: n in wanted, stop_at_layer=stop_at_layer)
    cache: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(x, hook):
            cache[name] = x.detach()
        return hook

    out = run_bridge(model, tokens, [(name, keep(name)) for name in sorted(wanted)], stop_at_layer)
    return out, cache


def final_norm(model, resid: Tensor) -> Tensor:
    """The final norm on the residual stream after the last block (identity where there is none)."""
    if model.cfg.normalization_type is None or getattr(model, "ln_final", None) is None:
        return resid
    return model.ln_final(resid)


def unembed_columns(model, normed: Tensor, columns: Tensor | None = None) -> Tensor:
    """Logits ``[rows, d_vocab_out]`` from the normalised final residual (``[rows, d_model]``),
    soft-capped where the model caps them; with ``columns`` only those are computed (the rest 0)."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    if columns is None:
        logits = model.unembed(normed[:, None])[:, 0]
    else:
        columns = columns.to(normed.device)
        logits = normed.new_zeros(len(normed), model.cfg.d_vocab_out)
        bias = model.b_U
        logits[:, columns] = normed @ model.W_U[:, columns] + (0 if bias is None else bias[columns])
    return apply_softcap(logits, output_soft_cap(model))


def output_soft_cap(model) -> float:
    """The logit soft-cap (Gemma-2's ``final_logit_softcapping``), or -1 for none."""
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    return float(cap) if cap is not None else -1.0
