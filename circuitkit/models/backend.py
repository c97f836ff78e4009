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
``blocks.L.hook_q_input`` ...) from `prepare` — without weight processing, so its numbers
stay the Hugging Face model's. Where a bridge lacks a fast path (starting at a layer, the
prefix KV cache), the slower equivalent runs and gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from circuitkit import names
from circuitkit.errors import InputError

Backend = Literal["hooked", "bridge"]
BACKENDS = ("hooked", "bridge")

# HookedTransformer config flags the graph and gradient runs switch; a bridge sets the first two
# through its own setters (they rebuild its hook wiring), and has no ungrouping of its own.
_SETTERS = {"use_split_qkv_input": "set_use_split_qkv_input", "use_hook_mlp_in": "set_use_hook_mlp_in"}


def transformer_lens_major() -> int:
    """TransformerLens's major version (3 has both model classes; 4 only the bridge)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("transformer-lens").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return 3


def has_hooked_transformer() -> bool:
    """Whether this TransformerLens still has ``HookedTransformer`` (removed in 4.0)."""
    return transformer_lens_major() < 4


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

    ``tokens`` (``[rows, pos]``) are the run's tokens: a bridge reads them wherever its
    architecture does beyond the residual stream (per-layer embeddings). TransformerLens's bridge
    cannot start at a layer (Hugging Face runs the layer loop), so the blocks below ``start`` are
    skipped (each passes its input on) where `_skipping_is_exact` measured that this gives
    the full run's result, and computed and overwritten otherwise. ``kwargs`` (a KV cache, masks)
    go to a ``HookedTransformer`` only.
    """
    if not is_bridge(model):
        return model.run_with_hooks(resid, start_at_layer=start, stop_at_layer=stop_at_layer,
                                    fwd_hooks=list(fwd_hooks), **kwargs)
    if kwargs:
        raise InputError(f"a TransformerBridge run takes no {sorted(kwargs)}; those are HookedTransformer fast paths")
    if tokens.shape[:2] != resid.shape[:2]:
        raise InputError(f"tokens {list(tokens.shape)} do not match the residual stream {list(resid.shape)}")
    # the residual stream at ``start`` is replaced (hooks on that hook point see ``resid``)
    hooks = [(names.hook("resid_pre", start), lambda x, hook: resid.to(x.dtype)), *fwd_hooks]
    with _lower_blocks_skipped(model, start if _skipping_is_exact(model, start) else 0):
        return run_bridge(model, tokens, hooks, stop_at_layer)


@contextmanager
def _lower_blocks_skipped(model, start: int) -> Iterator[None]:
    """A bridge whose blocks below ``start`` pass their input on unchanged for the duration."""
    def passthrough(hidden_states, *args, **kwargs):
        return hidden_states

    skipped = list(model.blocks)[:start]
    # an instance attribute, which nn.Module.__call__ finds first; set past the bridge component's
    # __setattr__, which would hand it to the wrapped Hugging Face layer
    for block in skipped:
        object.__setattr__(block, "forward", passthrough)
    try:
        yield
    finally:
        for block in skipped:
            object.__delattr__(block, "forward")


def _skipping_is_exact(model, start: int) -> bool:
    """Whether a run from layer ``start`` with the blocks below skipped gives what the full run does
    (the residual stream at ``start`` overwritten): measured once per model and layer on a probe. A
    block below can matter beyond the residual stream (layers sharing keys and values, caches)."""
    if start == 0:
        return True
    known = model.__dict__.setdefault("_circuitkit_skip_exact", {})
    if start not in known:
        tokens = _probe_tokens(model)
        gen = torch.Generator().manual_seed(0)
        resid = torch.randn(*tokens.shape, model.cfg.d_model, generator=gen).to(model_device(model), _dtype(model))
        hooks = [(names.hook("resid_pre", start), lambda x, hook: resid.to(x.dtype))]
        try:
            with torch.no_grad():
                full = run_bridge(model, tokens, hooks, None)
                with _lower_blocks_skipped(model, start):
                    skipped = run_bridge(model, tokens, hooks, None)
            known[start] = bool(torch.allclose(skipped, full, atol=1e-5 * max(float(full.abs().max()), 1.0), rtol=0))
        except Exception:  # a family whose loop needs what a skipped block returns: compute it
            known[start] = False
    return known[start]


def _probe_tokens(model) -> Tensor:
    """The few tokens (``[1, 2..4]``) a bridge is measured on."""
    cfg = model.cfg
    n = max(2, min(4, int(cfg.n_ctx or 4)))
    return torch.arange(1, n + 1, device=model_device(model))[None] % cfg.d_vocab


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


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


def run_with_cache(model, tokens: Tensor, wanted: set[str], stop_at_layer: int | None = None) -> tuple[Tensor, dict]:
    """``model.run_with_cache(tokens)`` caching only the hooks in ``wanted``; ``stop_at_layer`` as
    `run_from_layer`'s (a bridge stops after its last block too). Returns ``(output, cache)``."""
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


def model_device(model) -> torch.device:
    """The device the model's config names (CPU when it names none)."""
    device = model.cfg.device
    return device if isinstance(device, torch.device) else torch.device(device or "cpu")


# --- weights ----------------------------------------------------------------------------------------

def head_output_weights(model, layer: int) -> Tensor:
    """``W_O`` of ``layer``'s heads, ``[n_heads, d_head, d_model]``."""
    return model.blocks[layer].attn.W_O


def attention_input_norm(model, layer: int):
    """The norm ``layer`` applies to the residual stream before its q / k / v projections, as a
    callable (a bridge's: the Hugging Face module, so calling it fires no hook point), or None."""
    norm = getattr(model.blocks[layer], "ln1", None)
    return norm.original_component if norm is not None and is_bridge(model) else norm


def per_head_inputs(model, method: str) -> Literal["split", "projected"]:
    """How ``method`` reaches one head's query, key or value input alone: ``"split"`` — TransformerLens's
    per-head split inputs (``hook_q_input`` ...); ``"projected"`` — a bridge without them whose
    ``hook_q / k / v`` are measured to be the heads' projections of the normalised layer input
    (`head_input_projection` recomputes them from a moved input). ``ValueError`` (by
    `require`) when neither holds."""
    if audit(model).ok("split_inputs"):
        return "split"
    if audit(model).ok("projections"):
        return "projected"
    require(model, ("split_inputs",), method)
    raise AssertionError("unreachable")  # require raised


def head_input_projection(model, layer: int, which: int, inputs: Tensor) -> Tensor:
    """Each head's query (``which`` 0), key (1) or value (2) projection of its own residual-stream
    input: ``inputs`` ``[batch, pos, heads, d_model]`` -> ``[batch, pos, heads, d_head]`` (the layer's
    attention-input norm, then ``W_Q`` / ``W_K`` / ``W_V`` and bias; what ``hook_q / k / v`` carry)."""
    attn = model.blocks[layer].attn
    norm = None if is_post_norm(model) else attention_input_norm(model, layer)
    x = inputs if norm is None else norm(inputs)
    w = (attn.W_Q, attn.W_K, attn.W_V)[which]
    out = torch.einsum("bphd,hde->bphe", x, w.to(x.dtype))
    bias = (attn.b_Q, attn.b_K, attn.b_V)[which]
    return out if bias is None else out + bias.to(out.dtype)


def is_post_norm(model) -> bool:
    """Post-norm blocks (TransformerLens's list) feed attention the raw residual stream."""
    try:
        from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
    except ImportError:
        return False
    return architecture(model) in POST_NORM_ARCHITECTURES


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
    first two through its own setters and is ungrouped by `_ungrouped_bridge`."""
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
        with _ungrouped_bridge(model) if ungroup else nullcontext():
            yield
    finally:
        apply(old)


def grouped_kv_heads(model) -> int | None:
    """The number of key/value heads where fewer than the query heads share them (grouped-query or
    multi-query attention), else None."""
    cfg = model.cfg
    kv = getattr(cfg, "n_key_value_heads", None)
    return kv if kv is not None and kv < cfg.n_heads else None


def can_ungroup(model) -> bool:
    """Whether each query head can get its own key and value input: always for a
    ``HookedTransformer`` (TransformerLens's ``ungroup_grouped_query_attention``); for a bridge where
    its attention projects keys and values with plain linear layers that `_ungrouped_bridge`
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
        raise InputError(
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


# --- what a bridge's hooks can be trusted with --------------------------------------------------

# What methods may need of a model, and what each means (the keys of Audit.problems).
NEEDS = {
    "heads": "per-head outputs: hook_z of shape [batch, pos, n_heads, d_head] whose product with W_O, summed "
             "with b_O, is the attention output",
    "qkv": "per-head queries, keys and values at hook_q / hook_k / hook_v, shaped [batch, pos, heads, d_head]",
    "pattern": "attention patterns at hook_pattern that a hook can replace",
    "additive": "a residual stream that is the sum of the embedding and every attention and MLP output "
                "(resid_post = resid_pre + attn_out + mlp_out in every layer)",
    "split_inputs": "a separate query, key and value input per head (hook_q_input / hook_k_input / hook_v_input)",
    "unembed": "logits that are the final norm and W_U (+ b_U, soft-capped) of the last residual stream",
    "projections": "queries, keys and values that are each head's W_Q / W_K / W_V (+ bias) of the layer's "
                   "normalised input",
}


@dataclass(frozen=True)
class Audit:
    """What a model's hooks were measured to carry. ``problems`` maps each failed need (a key of
    `NEEDS`) to what was found; a ``HookedTransformer`` has none."""

    problems: dict[str, str] = field(default_factory=dict)
    broken: str | None = None  # why the model's plain forward pass fails, if it does

    def ok(self, need: str) -> bool:
        return need not in self.problems


def audit(model) -> Audit:
    """Check, once per model on a four-token probe run, that a bridge's hooks mean what circuitkit's
    methods assume (`NEEDS`); cached on the model. TransformerLens's bridge wraps each Hugging
    Face family with its own hook wiring, and some families' hooks are shaped or placed otherwise
    (multi-head latent attention, per-layer embeddings, multipliers, Mamba mixers), so every need is
    measured rather than assumed. A ``HookedTransformer`` is TransformerLens's reference: no problems."""
    if not is_bridge(model):
        return Audit()
    cached = getattr(model, "_circuitkit_audit", None)
    if cached is not None:
        return cached
    prepare(model)
    with torch.no_grad():
        problems = _audit_bridge(model)
    result = Audit(problems, problems.get("forward"))
    problems.pop("forward", None)
    model._circuitkit_audit = result
    return result


def require(model, needs: Sequence[str], method: str) -> None:
    """``ValueError`` before any work when ``model`` fails one of ``needs`` (`audit`), naming
    the method, what it needs, what was found, and what runs instead."""
    found = audit(model).problems
    for need in needs:
        if need in found:
            raise InputError(
                f"{method} needs {NEEDS[need]}; on model {model.cfg.model_name!r} ({architecture(model)}, "
                f"TransformerLens {backend(model)}) {found[need]}. Methods that need only the residual stream "
                "still run (activation patching of resid_pre / attn_out / mlp_out, the logit lens, circuits of "
                "whole layers: discover(level='layers'), --level layers); see docs/models.md")


def _audit_bridge(model) -> dict[str, str]:
    cfg = model.cfg
    problems: dict[str, str] = {}
    tokens = _probe_tokens(model)
    n = tokens.shape[1]
    layers = range(cfg.n_layers)
    wanted = {names.hook(h, layer) for layer in layers for h in ("resid_pre", "resid_post", "attn_out", "mlp_out",
                                                                   "z", "q", "k", "v", "pattern")}
    wanted = {h for h in wanted if h in model.hook_dict}
    try:
        with torch.no_grad():
            logits, cache = run_with_cache(model, tokens, wanted)
    except Exception as exc:  # a family whose plain forward fails: every need fails with its cause
        cause = f"its forward pass fails ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        return {need: cause for need in (*NEEDS, "forward")}
    scale = max(float(logits.abs().max()), 1.0)

    def close(a: Tensor, b: Tensor) -> bool:
        return a.shape == b.shape and float((a - b).abs().max()) <= 1e-4 * max(float(b.abs().max()), 1.0)

    kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    for layer in layers:
        z, attn_out = cache.get(names.hook("z", layer)), cache.get(names.hook("attn_out", layer))
        if z is None or attn_out is None:
            why = (f"layer {layer} has no attention heads with hook_z (its token mixer is not attention, or the "
                   "bridge hooks none)")
            for need in ("heads", "qkv", "pattern"):
                problems.setdefault(need, why)
            continue
        if "heads" not in problems:
            why = _head_outputs_problem(model, layer, z, attn_out, close)
            if why:
                problems["heads"] = why
        for short, heads in (("q", cfg.n_heads), ("k", kv), ("v", kv)):
            x = cache.get(names.hook(short, layer))
            if "qkv" not in problems and (x is None or x.ndim != 4 or x.shape[1] != n or x.shape[2] != heads):
                problems["qkv"] = (f"{names.hook(short, layer)} is "
                                   f"{'missing' if x is None else list(x.shape)}, not [1, {n}, {heads}, d_head]")
        pattern = cache.get(names.hook("pattern", layer))
        if "pattern" not in problems and (pattern is None or pattern.shape[-2:] != (n, n)):
            problems["pattern"] = f"{names.hook('pattern', layer)} is {'missing' if pattern is None else list(pattern.shape)}"
        mlp_out = cache.get(names.hook("mlp_out", layer), 0.0)
        pre, post = cache.get(names.hook("resid_pre", layer)), cache.get(names.hook("resid_post", layer))
        if "additive" not in problems and (pre is None or post is None or not close(pre + attn_out + mlp_out, post)):
            gap = float((pre + attn_out + mlp_out - post).abs().max()) if pre is not None and post is not None else None
            problems["additive"] = (f"resid_post of layer {layer} is not resid_pre + attn_out + mlp_out"
                                    + (f" (off by {gap:.3g}: a residual multiplier, or a mixer outside those hooks)"
                                       if gap is not None else " (hooks missing)"))
    final = cache.get(names.hook("resid_post", cfg.n_layers - 1))
    if final is None or not close(unembed_columns(model, final_norm(model, final[0]))[None], logits):
        problems["unembed"] = ("the logits are not unembed(ln_final(resid_post)) of the last layer (a logit "
                               "multiplier outside the unembedding)")
    if "pattern" not in problems:
        why = _pattern_write_problem(model, tokens, logits, scale)
        if why:
            problems["pattern"] = why
    why = _split_inputs_problem(model, tokens, logits, scale)
    if why:
        problems["split_inputs"] = why
    if "qkv" in problems:
        problems["projections"] = problems["qkv"]
    else:
        why = _projections_problem(model, cache, close)
        if why:
            problems["projections"] = why
    return problems


def _head_outputs_problem(model, layer: int, z: Tensor, attn_out: Tensor, close) -> str | None:
    try:
        w_o = head_output_weights(model, layer)
        bias = head_output_bias(model, layer)
    except Exception as exc:  # e.g. a layer whose head size differs from the config's
        return f"W_O of layer {layer} cannot be split into heads ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    if z.ndim != 4 or tuple(z.shape[2:]) != tuple(w_o.shape[:2]):
        return f"{names.hook('z', layer)} is {list(z.shape)} but W_O is {list(w_o.shape)} (heads x d_head x d_model)"
    with torch.no_grad():
        summed = torch.einsum("bphe,hed->bpd", z, w_o.to(z.dtype)) + bias.to(z.dtype)
        norm = getattr(model.blocks[layer], "ln1_post", None)
        if norm is not None:
            summed = norm.original_component(summed)
    if not close(summed, attn_out):
        return f"the heads' z @ W_O + b_O of layer {layer} is not its attention output"
    return None


def _projections_problem(model, cache: dict, close) -> str | None:
    """Whether each layer's ``hook_q / k / v`` are `head_input_projection` of its input."""
    for layer in range(model.cfg.n_layers):
        resid = cache.get(names.hook("resid_pre", layer))
        for which, short in enumerate(names.QKV):
            actual = cache.get(names.hook(short, layer))
            try:
                heads = actual.shape[2]
                expected = head_input_projection(model, layer, which, resid[:, :, None].expand(-1, -1, heads, -1))
            except Exception as exc:  # weights that cannot be split into heads, a missing norm ...
                return f"the {short} projections of layer {layer} cannot be recomputed ({type(exc).__name__}: {exc})"
            if not close(expected, actual):
                return (f"{names.hook(short, layer)} is not the heads' projection of the layer's normalised input "
                        "(a norm or a transform between them)")
    return None


def _pattern_write_problem(model, tokens: Tensor, logits: Tensor, scale: float) -> str | None:
    """Whether a value written at hook_pattern reaches the output (some bridges keep the Hugging Face
    attention kernel and only report the pattern)."""
    def uniform(x, hook):
        causal = torch.tril(torch.ones(x.shape[-2:], dtype=x.dtype, device=x.device))
        return (causal / causal.sum(-1, keepdim=True)).expand_as(x)

    hooks = [(names.hook("pattern", layer), uniform) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        changed = run_bridge(model, tokens, hooks, None)
    if float((changed - logits).abs().max()) <= 1e-6 * scale:
        return "values written at hook_pattern do not reach the output (the bridge keeps the attention kernel)"
    return None


def _split_inputs_problem(model, tokens: Tensor, logits: Tensor, scale: float) -> str | None:
    cfg = model.cfg
    seen: dict[str, tuple[int, ...]] = {}

    def keep(name: str):
        def hook(x, hook):
            seen[name] = tuple(x.shape)
        return hook

    hooks = [(names.hook(f"{x}_input", layer), keep(names.hook(f"{x}_input", layer)))
             for layer in range(cfg.n_layers) for x in ("q", "k", "v")]
    try:
        with hook_flags(model, use_split_qkv_input=True, use_hook_mlp_in=not cfg.attn_only,
                        ungroup_grouped_query_attention=True), torch.no_grad():
            split = run_bridge(model, tokens, [h for h in hooks if h[0] in model.hook_dict], None)
    except Exception as exc:  # TransformerLens refuses split inputs for some attention kinds
        return f"TransformerLens gives none ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    missing = [name for name, _ in hooks if name not in seen]
    if missing:
        return f"{missing[0]} never fires"
    bad = [(name, shape) for name, shape in seen.items() if shape[2] != cfg.n_heads]
    if bad:
        return f"{bad[0][0]} is {list(bad[0][1])}, not one input per query head"
    if float((split - logits).abs().max()) > 1e-4 * scale:
        return "the run with split inputs differs from the plain run"
    return None
