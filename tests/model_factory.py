"""Tiny randomly initialised HookedTransformers for tests (import as ``from model_factory import make_model``;
a module of its own because several test folders have a ``conftest.py``)."""


def make_model(tokenizer, *, attn_only=False, n_layers=2, n_heads=4, d_model=32, n_ctx=128, seed=0, **overrides):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = dict(
        n_layers=n_layers, d_model=d_model, d_head=d_model // n_heads, n_heads=n_heads,
        d_mlp=None if attn_only else 4 * d_model, d_vocab=len(tokenizer), n_ctx=n_ctx,
        act_fn="gelu", normalization_type="LN", attn_only=attn_only, seed=seed, device="cpu",
        model_name="tiny-test",
    )
    cfg.update(overrides)
    model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tokenizer)
    model.eval()
    return model


def word_model(kind: str, seed: int, n_layers: int = 2):
    """A tiny model on the default word vocabulary: ``"mha"`` (LayerNorm, 4 heads each with its own
    keys and values) or ``"gqa"`` (4 query heads sharing 2 key / value heads, RMSNorm, rotary)."""
    from circuitkit.tasks.builders import default_words
    from circuitkit.tokenizers import word_level_tokenizer

    tok = word_level_tokenizer(default_words())
    if kind == "gqa":
        return make_model(tok, n_layers=n_layers, n_heads=4, n_key_value_heads=2, normalization_type="RMS",
                          positional_embedding_type="rotary", seed=seed)
    return make_model(tok, n_layers=n_layers, seed=seed)


BRIDGE_FAMILIES = ("gemma4", "llama4", "deepseek_v3", "smollm3", "granite", "olmo3", "phi3", "gpt_oss", "falcon_h1",
                   "qwen3_next")
"""The ``save_hf_folder`` archs of current families, to be loaded through TransformerLens's ``TransformerBridge``."""


def save_hf_folder(tmp_path, arch, tokenizer):
    """A tiny random Hugging Face model of one family saved with ``tokenizer`` in ``tmp_path``;
    returns ``(hf_model, folder)``. Classic families: ``gpt2``, ``neox``, ``gptj``, ``llama``, ``mistral``,
    ``qwen3``, ``gemma2``, ``gemma3``; current ones (``BRIDGE_FAMILIES``), each small (d_model 32, 4 heads of
    width 8 where the family has plain heads) but keeping what sets the family apart:

    - ``gemma4``: ``Gemma4ForCausalLM``, 3 layers (sliding, full, full): full layers have head width 16
      and partial RoPE, per-layer embeddings, and the last layer reuses layer 1's keys and values (KV sharing).
    - ``llama4``: ``Llama4ForCausalLM``; layer 0 dense with chunked attention (chunk 3), layer 1 mixture of
      experts (4 experts, top 1, shared expert) with full attention and no RoPE.
    - ``deepseek_v3``: multi-head latent attention (low-rank Q and KV, split RoPE/no-RoPE head parts);
      layer 0 dense, layer 1 mixture of experts (4 routed experts, top 2, shared expert).
    - ``smollm3``: llama-like, layer 1 without RoPE.
    - ``granite``: llama-like with embedding, residual, attention and logits multipliers.
    - ``olmo3``: norms after attention and MLP (none before), q/k norms; layer 0 sliding window 3.
    - ``phi3``: fused ``qkv_proj`` and ``gate_up_proj``.
    - ``gpt_oss``: mixture of experts (4 experts, top 2), attention sinks, layer 0 sliding window 3.
    - ``falcon_h1``: attention and a Mamba-2 mixer in parallel in every layer, scalar multipliers.
    - ``qwen3_next``: layer 0 linear attention (gated delta net), layer 1 gated full attention;
      mixture-of-experts MLPs (4 experts, top 2, shared expert).

    Norm weights are perturbed away from their initial values, so a mis-mapped norm shows."""
    import torch
    import transformers as hf_lib

    v = len(tokenizer)
    common = dict(vocab_size=v, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=64)
    configs = {
        "gpt2": lambda: (hf_lib.GPT2LMHeadModel, hf_lib.GPT2Config(vocab_size=v, n_positions=64, n_embd=32, n_layer=2,
                                                                   n_head=4)),
        "neox": lambda: (hf_lib.GPTNeoXForCausalLM, hf_lib.GPTNeoXConfig(**common, rotary_pct=0.5)),
        "gptj": lambda: (hf_lib.GPTJForCausalLM, hf_lib.GPTJConfig(vocab_size=v, n_positions=64, n_embd=32, n_layer=2,
                                                                   n_head=4, rotary_dim=4)),
        "llama": lambda: (hf_lib.LlamaForCausalLM, hf_lib.LlamaConfig(**common, num_key_value_heads=2)),
        "mistral": lambda: (hf_lib.MistralForCausalLM, hf_lib.MistralConfig(**common, num_key_value_heads=2,
                                                                            sliding_window=3)),
        "qwen3": lambda: (hf_lib.Qwen3ForCausalLM, hf_lib.Qwen3Config(**common, num_key_value_heads=2, head_dim=8)),
        "gemma2": lambda: (hf_lib.Gemma2ForCausalLM, hf_lib.Gemma2Config(
            **common, num_key_value_heads=2, head_dim=8, sliding_window=3, query_pre_attn_scalar=8,
            attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
        "gemma3": lambda: (hf_lib.Gemma3ForCausalLM, hf_lib.Gemma3TextConfig(
            **common, num_key_value_heads=2, head_dim=8, sliding_window=3, query_pre_attn_scalar=8,
            layer_types=["sliding_attention", "full_attention"])),
        "gemma4": lambda: (hf_lib.Gemma4ForCausalLM, hf_lib.Gemma4TextConfig(
            **{**common, "num_hidden_layers": 3}, num_key_value_heads=2, head_dim=8, global_head_dim=16,
            sliding_window=3, layer_types=["sliding_attention", "full_attention", "full_attention"],
            num_kv_shared_layers=1, vocab_size_per_layer_input=v, hidden_size_per_layer_input=8,
            final_logit_softcapping=30.0)),
        "llama4": lambda: (hf_lib.Llama4ForCausalLM, hf_lib.Llama4TextConfig(
            **{**common, "intermediate_size": 32}, num_key_value_heads=2, head_dim=8, intermediate_size_mlp=64,
            num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=2, no_rope_layers=[1, 0],
            attention_chunk_size=3)),
        "deepseek_v3": lambda: (hf_lib.DeepseekV3ForCausalLM, hf_lib.DeepseekV3Config(
            **common, num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=4, qk_rope_head_dim=4,
            v_head_dim=8, first_k_dense_replace=1, n_routed_experts=4, num_experts_per_tok=2, n_group=1,
            topk_group=1, n_shared_experts=1, moe_intermediate_size=16)),
        "smollm3": lambda: (hf_lib.SmolLM3ForCausalLM, hf_lib.SmolLM3Config(
            **common, num_key_value_heads=2, no_rope_layers=[1, 0], pad_token_id=None, bos_token_id=None,
            eos_token_id=None)),
        "granite": lambda: (hf_lib.GraniteForCausalLM, hf_lib.GraniteConfig(
            **common, num_key_value_heads=2, embedding_multiplier=4.0, residual_multiplier=0.5,
            attention_multiplier=0.125, logits_scaling=2.0)),
        "olmo3": lambda: (hf_lib.Olmo3ForCausalLM, hf_lib.Olmo3Config(
            **common, num_key_value_heads=2, sliding_window=3, layer_types=["sliding_attention", "full_attention"])),
        "phi3": lambda: (hf_lib.Phi3ForCausalLM, hf_lib.Phi3Config(
            **common, num_key_value_heads=2, pad_token_id=None, eos_token_id=None)),
        "gpt_oss": lambda: (hf_lib.GptOssForCausalLM, hf_lib.GptOssConfig(
            **{**common, "intermediate_size": 32}, num_key_value_heads=2, head_dim=8, num_local_experts=4,
            num_experts_per_tok=2, sliding_window=3, layer_types=["sliding_attention", "full_attention"])),
        "falcon_h1": lambda: (hf_lib.FalconH1ForCausalLM, hf_lib.FalconH1Config(
            **common, num_key_value_heads=2, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_d_state=8,
            mamba_chunk_size=4, embedding_multiplier=2.0, lm_head_multiplier=0.5, key_multiplier=0.4,
            attention_out_multiplier=0.9, ssm_in_multiplier=1.25, ssm_out_multiplier=0.25,
            mlp_multipliers=[0.9, 0.6], ssm_multipliers=[0.35, 0.25, 0.35, 0.5, 0.35])),
        "qwen3_next": lambda: (hf_lib.Qwen3NextForCausalLM, hf_lib.Qwen3NextConfig(
            **common, num_key_value_heads=2, head_dim=8, layer_types=["linear_attention", "full_attention"],
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16)),
    }
    cls, cfg = configs[arch]()
    torch.manual_seed(0)
    hf = cls(cfg).eval()
    with torch.no_grad():  # norm weights away from their initial identity, so a mis-mapped norm shows
        for name, p in hf.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    path = tmp_path / f"tiny-{arch}"
    hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return hf, path


def bosless_bpe_tokenizer(vocab_size: int = 1000):
    """A byte-level BPE tokenizer with no BOS, EOS or pad token (as many research tokenizers),
    trained offline on the default builders' words, so names are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from circuitkit.tasks.builders import default_words

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator([(" ".join(default_words()) + ". ") * 20], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core)


def save_hf_gpt2(path, tokenizer, seed: int = 0):
    """A tiny random GPT-2 saved as a Hugging Face folder (``save_pretrained``) with ``tokenizer``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                    bos_token_id=None, eos_token_id=None)).eval()
    hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
