"""Write a zoo model (a TransformerLens ``HookedTransformer``) as a Hugging Face checkpoint folder
that runs the same function: ``config.json`` + ``model.safetensors``, the zoo's tokenizer (saved
with ``save_pretrained``), ``circuitkit_zoo.json`` (which zoo model it is and its known circuit) and a
short ``README.md``.

Which Hugging Face architecture expresses which models exactly:

* LayerNorm + learned positions -> ``GPT2LMHeadModel`` (``activation_function`` is TransformerLens's
  ``act_fn``: ``"gelu"`` is the exact erf GELU in both).
* LayerNorm + rotary positions -> ``GPTNeoXForCausalLM`` (``use_parallel_residual`` as the model's
  ``parallel_attn_mlp``; ``rotary_pct = rotary_dim / d_head``; TransformerLens's default rotary is
  NeoX's rotate-half, and adjacent-pair rotary is turned into it by permuting the query / key
  dimensions of every head).
* Attention-only models get every MLP weight and bias zero: their MLPs output exactly zero.
* Models without LayerNorm are refused: every Hugging Face decoder architecture normalises the
  residual stream. So are bidirectional attention, ``d_vocab_out != d_vocab`` and the other
  features listed by `export_problems`.

Three rewrites keep the function while fitting the Hugging Face layout (no other weight changes):

* **Attention scale.** GPT-2 divides scores by ``sqrt(d_head)``, NeoX multiplies by
  ``d_head ** -0.5``; a model with another scale (``attn_scale``, or none) has ``W_Q`` / ``b_Q``
  multiplied by ``sqrt(d_head) / attn_scale``.
* **Unembedding bias.** GPT-2 and NeoX have no ``lm_head`` bias, while trained zoo models have
  a ``b_U``. It is folded exactly into the final LayerNorm's bias and the unembedding: the
  normalised stream ``n`` always has zero mean over ``d_model``, so with ``p`` such that
  ``p * w`` is constant (``w`` the final norm's weight), ``(n * w) @ p = 0`` and
  ``W_U + outer(p, r)`` reads every ``n * w`` as ``W_U`` does, while the bias ``b + beta * p``
  adds ``beta * p @ W_U + (b @ p + beta * |p|^2) * r``, which is ``b_U`` for
  ``r = (b_U - beta * p @ W_U) / (b @ p + beta * |p|^2)``. Logits, and every centred direction
  read through the final norm (direct logit attribution, the logit lens), are unchanged; only the
  final norm's output itself (``ln_final.hook_normalized``) is shifted by the constant ``beta * p``.
* **No LayerNorm weight** (``LNPre``, TransformerLens's folded LayerNorm): weight ones, bias zeros.

Every export is checked before it is written: the Hugging Face model built from the new folder
must give the model's logits on random tokens (to 1e-4 of their scale), else nothing is written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from circuitkit.atomic import folder_written
from circuitkit.errors import InputError, RunError
from circuitkit.models.zoo_store import ZooCard, load_zoo_model, zoo_card, zoo_tokenizer
from circuitkit.version import __version__

PROVENANCE_FILE = "circuitkit_zoo.json"
GPT2 = "GPT2LMHeadModel"
NEOX = "GPTNeoXForCausalLM"

NO_LAYERNORM = ("it has no LayerNorm (normalization_type None): every Hugging Face decoder architecture "
                "normalises the residual stream before attention, MLPs and the unembedding, and this model "
                "reads the raw stream, so no Hugging Face architecture runs its function")
# TransformerLens act_fn -> the Hugging Face activation name computing the same function.
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_fast": "gelu_fast", "relu": "relu", "silu": "silu",
               "gelu_pytorch_tanh": "gelu_pytorch_tanh"}
CHECK_TOLERANCE = 1e-4  # of the logits' scale


class ExportRefused(InputError):
    """No Hugging Face architecture runs this model's function exactly; ``reasons`` says why."""

    def __init__(self, name: str, reasons: list[str]) -> None:
        self.reasons = list(reasons)
        super().__init__(f"cannot export {name!r} as a Hugging Face folder: " + "; ".join(self.reasons))


def architecture(cfg) -> str:
    """The Hugging Face class a model exports to (``ExportRefused`` where none fits)."""
    problems = export_problems(cfg)
    if problems:
        raise ExportRefused(getattr(cfg, "model_name", "model"), problems)
    return NEOX if cfg.positional_embedding_type == "rotary" else GPT2


def export_problems(cfg) -> list[str]:
    """Why no Hugging Face architecture expresses a ``HookedTransformerConfig`` exactly; empty when
    GPT-2 (learned positions) or GPT-NeoX (rotary) does. The missing LayerNorm comes first."""
    problems: list[str] = []
    norm = cfg.normalization_type
    if norm is None:
        problems.append(NO_LAYERNORM)
    elif norm not in ("LN", "LNPre"):
        problems.append(f"its normalization is {norm!r} (GPT-2 and GPT-NeoX use LayerNorm)")
    if getattr(cfg, "attention_dir", "causal") != "causal":
        problems.append(f"its attention is {cfg.attention_dir} (Hugging Face decoders attend causally)")
    if cfg.d_vocab_out != cfg.d_vocab:
        problems.append(f"its output vocabulary (d_vocab_out {cfg.d_vocab_out}) differs from its input vocabulary "
                        f"(d_vocab {cfg.d_vocab}), and GPT-2 and GPT-NeoX have one vocabulary")
    pos = cfg.positional_embedding_type
    if pos not in ("standard", "rotary"):
        problems.append(f"its positional embedding is {pos!r} (GPT-2 has learned positions, GPT-NeoX rotary)")
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        problems.append(f"n_heads * d_head = {cfg.n_heads * cfg.d_head} != d_model {cfg.d_model} (GPT-2 and "
                        "GPT-NeoX split d_model into the heads)")
    if getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads):
        problems.append("it shares keys and values between query heads (n_key_value_heads), which GPT-2 and GPT-NeoX do not")
    if not cfg.attn_only:
        if cfg.act_fn not in ACTIVATIONS:
            problems.append(f"its MLP activation {cfg.act_fn!r} has no Hugging Face equivalent")
        if cfg.gated_mlp:
            problems.append("its MLPs are gated (GPT-2 and GPT-NeoX MLPs are not)")
    if cfg.parallel_attn_mlp and not cfg.attn_only and pos != "rotary":
        problems.append("attention and MLP run in parallel with learned positions (GPT-2 runs them in sequence)")
    flags = {"use_local_attn": "local (windowed) attention", "use_qk_norm": "query / key norms",
             "use_normalization_before_and_after": "norms after attention and MLP",
             "post_embedding_ln": "a LayerNorm after the embedding", "final_rms": "a final RMSNorm",
             "num_experts": "mixture-of-experts MLPs", "use_yarn_rope": "YaRN rotary scaling",
             "use_NTK_by_parts_rope": "NTK-by-parts rotary scaling", "use_dynamic_ntk_rope": "dynamic NTK rotary"}
    problems += [f"it has {what}" for flag, what in flags.items() if getattr(cfg, flag, None)]
    if (getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) > 0 or (getattr(cfg, "output_logits_soft_cap", -1.0) or -1.0) > 0:
        problems.append("it soft-caps attention scores or logits")
    if pos == "rotary":
        if getattr(cfg, "rotary_scaling_factor", 1.0) != 1.0 or getattr(cfg, "rotary_base_local", None) is not None:
            problems.append("its rotary frequencies are scaled or differ per layer")
        rotary_dim = cfg.rotary_dim or 0
        if rotary_dim % 2 or not 0 < rotary_dim <= cfg.d_head or int(cfg.d_head * (rotary_dim / cfg.d_head)) != rotary_dim:
            problems.append(f"rotary_dim {cfg.rotary_dim} is not an even width GPT-NeoX's rotary_pct can express")
    return problems


def hf_config(cfg, tokenizer=None):
    """The ``transformers`` config of the exported model."""
    import transformers

    special = {}
    if tokenizer is not None:
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(tokenizer, key, None)
            if value is not None and 0 <= value < cfg.d_vocab:
                special[key] = int(value)
    d_mlp = cfg.d_mlp if cfg.d_mlp else 4 * cfg.d_model
    act = "gelu" if cfg.attn_only else ACTIVATIONS[cfg.act_fn]
    if architecture(cfg) == GPT2:
        config = transformers.GPT2Config(
            vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layers,
            n_head=cfg.n_heads, n_inner=d_mlp, activation_function=act, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, layer_norm_epsilon=cfg.eps, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
            reorder_and_upcast_attn=False, tie_word_embeddings=False, **special)
    else:
        config = transformers.GPTNeoXConfig(
            vocab_size=cfg.d_vocab, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads, intermediate_size=d_mlp, hidden_act=act,
            rotary_pct=cfg.rotary_dim / cfg.d_head, rotary_emb_base=cfg.rotary_base,
            max_position_embeddings=cfg.n_ctx, layer_norm_eps=cfg.eps,
            use_parallel_residual=bool(cfg.parallel_attn_mlp and not cfg.attn_only), attention_bias=True,
            attention_dropout=0.0, hidden_dropout=0.0, tie_word_embeddings=False, **special)
    config.architectures = [architecture(cfg)]
    return config


def hf_state_dict(model) -> dict[str, Any]:
    """The exported model's weights under the Hugging Face names of `architecture` (float32)."""
    import einops
    import torch

    cfg = model.cfg
    arch = architecture(cfg)
    sd = {k: v.detach().to(torch.float32).cpu() for k, v in model.state_dict().items()}
    d, d_mlp = cfg.d_model, cfg.d_mlp if cfg.d_mlp else 4 * cfg.d_model
    ones, zeros = torch.ones(d), torch.zeros(d)

    def norm(prefix: str):
        if cfg.normalization_type == "LN" and f"{prefix}.w" in sd:
            return sd[f"{prefix}.w"], sd[f"{prefix}.b"]
        return ones.clone(), zeros.clone()  # LNPre: LayerNorm without weights (folded into what follows)

    q_factor = _query_factor(cfg)
    perm = _rotary_permutation(cfg)
    out: dict[str, Any] = {}
    base = "transformer" if arch == GPT2 else "gpt_neox"
    for layer in range(cfg.n_layers):
        a = f"blocks.{layer}.attn"
        W_Q, W_K, W_V = sd[f"{a}.W_Q"] * q_factor, sd[f"{a}.W_K"], sd[f"{a}.W_V"]  # [head, d_model, d_head]
        b_Q, b_K, b_V = sd[f"{a}.b_Q"] * q_factor, sd[f"{a}.b_K"], sd[f"{a}.b_V"]  # [head, d_head]
        if perm is not None:
            W_Q, W_K, b_Q, b_K = W_Q[..., perm], W_K[..., perm], b_Q[..., perm], b_K[..., perm]
        W_O, b_O = sd[f"{a}.W_O"], sd[f"{a}.b_O"]  # [head, d_head, d_model]
        ln1 = norm(f"blocks.{layer}.ln1")
        if cfg.attn_only:  # the MLP outputs exactly zero: every weight and bias zero
            ln2 = (ones.clone(), zeros.clone())
            W_in, b_in, W_out, b_out = torch.zeros(d, d_mlp), torch.zeros(d_mlp), torch.zeros(d_mlp, d), zeros.clone()
        else:
            ln2 = norm(f"blocks.{layer}.ln2")
            m = f"blocks.{layer}.mlp"
            W_in, b_in, W_out, b_out = sd[f"{m}.W_in"], sd[f"{m}.b_in"], sd[f"{m}.W_out"], sd[f"{m}.b_out"]
        if arch == GPT2:  # transformer_lens/pretrained/weight_conversions/gpt2.py, inverted
            h = f"{base}.h.{layer}"
            flat = [einops.rearrange(w, "i m h -> m (i h)") for w in (W_Q, W_K, W_V)]
            out.update({
                f"{h}.ln_1.weight": ln1[0], f"{h}.ln_1.bias": ln1[1],
                f"{h}.attn.c_attn.weight": torch.cat(flat, dim=1),  # Conv1D [d_model, 3 * d_model]
                f"{h}.attn.c_attn.bias": torch.cat([b.reshape(-1) for b in (b_Q, b_K, b_V)]),
                f"{h}.attn.c_proj.weight": einops.rearrange(W_O, "i h m -> (i h) m"), f"{h}.attn.c_proj.bias": b_O,
                f"{h}.ln_2.weight": ln2[0], f"{h}.ln_2.bias": ln2[1],
                f"{h}.mlp.c_fc.weight": W_in, f"{h}.mlp.c_fc.bias": b_in,
                f"{h}.mlp.c_proj.weight": W_out, f"{h}.mlp.c_proj.bias": b_out,
            })
        else:  # transformer_lens/pretrained/weight_conversions/neox.py, inverted
            h = f"{base}.layers.{layer}"
            out.update({
                f"{h}.input_layernorm.weight": ln1[0], f"{h}.input_layernorm.bias": ln1[1],
                f"{h}.attention.query_key_value.weight": einops.rearrange(
                    torch.stack([W_Q, W_K, W_V]), "qkv i m h -> (i qkv h) m"),
                f"{h}.attention.query_key_value.bias": einops.rearrange(
                    torch.stack([b_Q, b_K, b_V]), "qkv i h -> (i qkv h)"),
                f"{h}.attention.dense.weight": einops.rearrange(W_O, "i h m -> m (i h)"),
                f"{h}.attention.dense.bias": b_O,
                f"{h}.post_attention_layernorm.weight": ln2[0], f"{h}.post_attention_layernorm.bias": ln2[1],
                f"{h}.mlp.dense_h_to_4h.weight": W_in.T, f"{h}.mlp.dense_h_to_4h.bias": b_in,
                f"{h}.mlp.dense_4h_to_h.weight": W_out.T, f"{h}.mlp.dense_4h_to_h.bias": b_out,
            })
    w_f, b_f = norm("ln_final")
    b_U = sd.get("unembed.b_U", torch.zeros(cfg.d_vocab_out))
    W_U, b_f = fold_unembed_bias(sd["unembed.W_U"], b_U, w_f, b_f)
    if arch == GPT2:
        out.update({f"{base}.wte.weight": sd["embed.W_E"], f"{base}.wpe.weight": sd["pos_embed.W_pos"],
                    f"{base}.ln_f.weight": w_f, f"{base}.ln_f.bias": b_f})
    else:
        out.update({f"{base}.embed_in.weight": sd["embed.W_E"],
                    f"{base}.final_layer_norm.weight": w_f, f"{base}.final_layer_norm.bias": b_f})
    out["lm_head.weight"] = W_U.T
    return {k: v.contiguous() for k, v in out.items()}


def fold_unembed_bias(W_U, b_U, w, b):
    """``(W_U', b')`` with ``(n * w + b') @ W_U' == (n * w + b) @ W_U + b_U`` for every ``n`` of zero
    mean (a LayerNorm's normalised stream), so a final LayerNorm with bias ``b'`` and an unembedding
    ``W_U'`` without bias give the logits of ``W_U`` with bias ``b_U`` (the module docstring derives it).
    Returned unchanged where ``b_U`` is zero."""
    import torch

    if not torch.any(b_U != 0):
        return W_U, b
    W_U, b_U, w, b = (t.to(torch.float64) for t in (W_U, b_U, w, b))
    zero = (w == 0).nonzero()
    if len(zero):  # a dimension the normalised stream never reaches: read the bias from it alone
        p = torch.zeros_like(w)
        p[zero[0, 0]] = 1.0
    else:  # p * w = const, so (n * w) @ p = const * sum(n) = 0
        p = 1.0 / w
        p = p / p.norm()
    beta = 1.0 + float((b @ p).abs())  # makes b @ p + beta * |p|^2 >= 1
    r = (b_U - beta * (p @ W_U)) / (b @ p + beta)
    return (W_U + torch.outer(p, r)).to(torch.float32), (b + beta * p).to(torch.float32)


def _query_factor(cfg) -> float:
    """What ``W_Q`` / ``b_Q`` are multiplied by so that GPT-2's and NeoX's ``1 / sqrt(d_head)`` gives the
    model's attention scores (1.0, exactly, where the model already scales by ``sqrt(d_head)``)."""
    scale = cfg.attn_scale if cfg.use_attn_scale else 1.0
    factor = math.sqrt(cfg.d_head) / scale
    return 1.0 if abs(factor - 1.0) < 1e-12 else factor


def _rotary_permutation(cfg):
    """For adjacent-pair rotary (GPT-J style), the order of each head's query / key dimensions that
    makes it NeoX's rotate-half: pair ``(2j, 2j+1)`` becomes ``(j, j + rotary_dim / 2)``."""
    if cfg.positional_embedding_type != "rotary" or not getattr(cfg, "rotary_adjacent_pairs", False):
        return None
    r = cfg.rotary_dim
    return [*range(0, r, 2), *range(1, r, 2), *range(r, cfg.d_head)]


def build_hf_model(model, tokenizer=None):
    """The ``transformers`` model (eager attention, eval mode) running ``model``'s function."""
    import transformers

    config = hf_config(model.cfg, tokenizer)
    config._attn_implementation = "eager"
    cls = getattr(transformers, architecture(model.cfg))
    hf = cls(config)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    missing = [k for k in missing if not k.endswith(("masked_bias", ".attn.bias", "rotary_emb.inv_freq"))]
    if missing or unexpected:  # a mapping bug, never a user error
        raise RunError(f"exported weights do not fit {cls.__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return hf.eval()


def check_same_function(model, hf, n_prompts: int = 2, seed: int = 0) -> float:
    """The largest difference between ``model``'s and ``hf``'s logits on random tokens (the full
    context for one prompt, 16 tokens for the rest), relative to the logits' scale."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for length in (model.cfg.n_ctx, *[min(16, model.cfg.n_ctx)] * max(0, n_prompts - 1)):
        tokens = torch.randint(0, model.cfg.d_vocab, (1, length), generator=gen)
        with torch.no_grad():
            expected = model(tokens.to(model.cfg.device)).float().cpu()
            actual = hf(tokens).logits.float()
        worst = max(worst, float((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-6)))
    return worst


def export_model_hf(model, folder, *, tokenizer=None, provenance: dict | None = None, force: bool = False,
                    name: str | None = None) -> Path:
    """Write ``model`` (a ``HookedTransformer``) into ``folder`` as a Hugging Face checkpoint:
    ``config.json``, ``model.safetensors``, the tokenizer (``save_pretrained``) and, when given,
    ``provenance`` as ``circuitkit_zoo.json``. Everything is checked first (``ExportRefused`` naming
    why the model cannot be exported exactly; ``ValueError`` for an existing non-empty ``folder``
    without ``force``) and built in a temp folder beside ``folder``, which replaces it in one rename."""
    name = name or getattr(model.cfg, "model_name", "model")
    problems = export_problems(model.cfg)
    if problems:
        raise ExportRefused(name, problems)
    final = Path(folder).expanduser()
    if final.exists() and not final.is_dir():
        raise InputError(f"{str(final)!r} exists and is not a folder; pass a folder path")
    if final.is_dir() and any(final.iterdir()) and not force:
        raise InputError(f"{str(final)!r} exists and is not empty; pass force=True (--force) to replace it")
    hf = build_hf_model(model, tokenizer)
    error = check_same_function(model, hf)
    if error > CHECK_TOLERANCE:  # a mapping bug, never a user error: write nothing
        raise RunError(f"the exported {type(hf).__name__} differs from {name!r} by {error:.2e} of the logits' "
                           "scale; nothing was written")
    with folder_written(final) as tmp:
        _save_quietly(hf, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if provenance is not None:
            (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
            (tmp / "README.md").write_text(_readme(provenance))
    return final


def _save_quietly(hf, folder: Path) -> None:
    """``hf.save_pretrained(folder)`` without transformers' progress bar (one tiny shard)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        hf.save_pretrained(folder, safe_serialization=True)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def export_notes(model) -> list[str]:
    """What a reader of the exported folder should know about how its layout differs from the model's."""
    cfg = model.cfg
    arch = architecture(cfg)
    notes = []
    if cfg.attn_only:
        notes.append(f"the zoo model is attention-only; the exported {arch} has MLPs whose weights and biases are all "
                     "zero, so every MLP outputs zero (MLP nodes carry nothing: leave them out of the circuit)")
    b_U = getattr(getattr(model, "unembed", None), "b_U", None)
    if b_U is not None and bool((b_U != 0).any()):
        notes.append("the zoo model's unembedding bias b_U is folded exactly into the final LayerNorm's bias and "
                     "lm_head (Hugging Face's lm_head has no bias): the logits are the same, the final norm's "
                     "output is shifted by a constant vector")
    scale = cfg.attn_scale if cfg.use_attn_scale else 1.0
    if _query_factor(cfg) != 1.0:
        notes.append(f"the zoo model scales attention scores by 1/{scale:g}; the query weights and biases are "
                     f"multiplied by sqrt(d_head)/{scale:g} so that {arch}'s 1/sqrt(d_head) gives the same scores")
    if getattr(cfg, "rotary_adjacent_pairs", False) and cfg.positional_embedding_type == "rotary":
        notes.append("the zoo model rotates adjacent pairs of query / key dimensions; each head's query and key "
                     "dimensions are reordered so that GPT-NeoX's rotate-half gives the same scores")
    if cfg.normalization_type == "LNPre":
        notes.append("the zoo model's LayerNorms have no weights (folded): exported with weight 1 and bias 0")
    return notes


def zoo_provenance(card: ZooCard, model) -> dict[str, Any]:
    """``circuitkit_zoo.json``: which zoo model the folder holds and which circuit is true."""
    return {
        "zoo_name": card.name, "description": card.description, "construction": card.construction,
        "task": card.task, "circuit": card.circuit, "accuracy": card.accuracy,
        "architecture": architecture(model.cfg), "notes": export_notes(model),
        "circuitkit_version": __version__,
    }


def _readme(provenance: dict[str, Any]) -> str:
    circuit = provenance.get("circuit", {})
    lines = [f"# {provenance.get('zoo_name', 'model')} (circuitkit zoo)", "",
             str(provenance.get("description", "")), "",
             f"Exported by circuitkit {provenance.get('circuitkit_version')} as `{provenance.get('architecture')}`; "
             f"the reference circuit ({len(circuit.get('nodes', []))} nodes, {len(circuit.get('edges', []))} edges) "
             f"and the task are in `{PROVENANCE_FILE}`.", ""]
    lines += [f"* {note}" for note in provenance.get("notes", [])]
    return "\n".join(lines) + "\n"


def export_zoo_hf(name: str, folder, *, force: bool = False) -> Path:
    """Write zoo model ``name`` into ``folder`` as a Hugging Face checkpoint (see
    `export_model_hf`) with its tokenizer and ``circuitkit_zoo.json``. ``ExportRefused``, before
    anything is read or written, for a model no Hugging Face architecture expresses exactly."""
    from transformer_lens import HookedTransformerConfig

    card = zoo_card(name)
    cfg = HookedTransformerConfig(**{**card.config, "device": "cpu"})
    problems = export_problems(cfg)
    if problems:
        raise ExportRefused(name, problems)
    model = load_zoo_model(name, device="cpu")
    return export_model_hf(model, folder, tokenizer=zoo_tokenizer(card), provenance=zoo_provenance(card, model),
                           force=force, name=name)
