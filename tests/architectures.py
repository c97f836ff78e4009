"""The architecture matrix: one tiny random HookedTransformer per model family circuitkit supports,
each built from the TransformerLens configuration flags that family uses (import as
``from architectures import FAMILIES, family_model``; a module of its own because several test
folders have a ``conftest.py``)."""

from __future__ import annotations

import torch
from model_factory import make_model

_LLAMA = dict(normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True,
              act_fn="silu")
_GEMMA = dict(normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True,
              act_fn="gelu_pytorch_tanh", n_key_value_heads=2, use_normalization_before_and_after=True)

# family -> HookedTransformerConfig overrides of model_factory.make_model's GPT-2-like defaults
# (2 layers, 4 heads of d_head 8, LayerNorm, learned positions, GELU MLPs). "tie" ties W_U to W_E.
FAMILIES: dict[str, dict] = {
    "gpt2": dict(seed=11),
    "pythia-gpt-neox": dict(positional_embedding_type="rotary", rotary_dim=4, parallel_attn_mlp=True, seed=12),
    "gpt-j": dict(positional_embedding_type="rotary", rotary_dim=4, parallel_attn_mlp=True, act_fn="gelu_new",
                  seed=13),
    "llama-3": dict(_LLAMA, n_key_value_heads=2, seed=14),
    "mistral-sliding-window": dict(_LLAMA, n_key_value_heads=2, use_local_attn=True, attn_types=["local", "local"],
                                   window_size=3, seed=15),
    "falcon-multi-query": dict(positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=1,
                               parallel_attn_mlp=True, seed=16),
    "gemma-2": dict(_GEMMA, attn_types=["local", "global"], use_local_attn=True, window_size=3,
                    attn_scores_soft_cap=2.0, output_logits_soft_cap=3.0, tie=True, seed=17),
    "gemma-3": dict(_GEMMA, use_qk_norm=True, attn_types=["local", "global"], use_local_attn=True, window_size=3,
                    tie=True, seed=18),
    "qwen-3-qk-norm": dict(_LLAMA, n_key_value_heads=2, use_qk_norm=True, seed=19),
    # TransformerLens's OLMo-2 block: raw residual into attention / MLP, their outputs normalised
    # (post-norm ln1 / ln2), QK-norm over whole projected vectors
    # (multi-head, as the released OLMo-2 models are)
    "olmo-2-post-norm": dict(_LLAMA, original_architecture="Olmo2ForCausalLM", seed=25),
    "bloom-alibi": dict(positional_embedding_type="alibi", seed=20),
    "opt-shortformer": dict(positional_embedding_type="shortformer", seed=21),
    "mixtral-moe": dict(_LLAMA, n_key_value_heads=2, num_experts=4, experts_per_token=2, seed=22),
    "tracr-untied-vocab-out": dict(normalization_type=None, d_vocab_out=12, initializer_range=0.2, seed=23),
    "attention-only": dict(attn_only=True, normalization_type=None, initializer_range=0.2, seed=24),
}

POST_NORM = {name for name, cfg in FAMILIES.items()
             if cfg.get("use_normalization_before_and_after") or cfg.get("original_architecture") == "Olmo2ForCausalLM"}
PARALLEL = {name for name, cfg in FAMILIES.items() if cfg.get("parallel_attn_mlp")}


def family_model(name: str, tokenizer, **extra):
    """The family's tiny random model (``eval`` mode, CPU)."""
    overrides = {**FAMILIES[name], **extra}
    tie = overrides.pop("tie", False)
    model = make_model(tokenizer, **overrides)
    if tie:
        with torch.no_grad():
            model.unembed.W_U.copy_(model.embed.W_E.T)
    if "dtype" in extra:  # TransformerLens builds a mixture of experts' nn.Linear layers in float32
        model = model.to(extra["dtype"])
    return model
