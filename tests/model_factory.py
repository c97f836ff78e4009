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


def save_hf_folder(tmp_path, arch, tokenizer):
    """A tiny random Hugging Face model of one family (``gpt2``, ``neox``, ``gptj``, ``llama``,
    ``mistral``, ``qwen3``, ``gemma2``, ``gemma3``) saved with ``tokenizer`` in ``tmp_path``;
    returns ``(hf_model, folder)``."""
    import torch
    import transformers as hf_lib

    v = len(tokenizer)
    common = dict(vocab_size=v, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=64)
    configs = {
        "gpt2": (hf_lib.GPT2LMHeadModel, hf_lib.GPT2Config(vocab_size=v, n_positions=64, n_embd=32, n_layer=2, n_head=4)),
        "neox": (hf_lib.GPTNeoXForCausalLM, hf_lib.GPTNeoXConfig(**common, rotary_pct=0.5)),
        "gptj": (hf_lib.GPTJForCausalLM, hf_lib.GPTJConfig(vocab_size=v, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                                           rotary_dim=4)),
        "llama": (hf_lib.LlamaForCausalLM, hf_lib.LlamaConfig(**common, num_key_value_heads=2)),
        "mistral": (hf_lib.MistralForCausalLM, hf_lib.MistralConfig(**common, num_key_value_heads=2, sliding_window=3)),
        "qwen3": (hf_lib.Qwen3ForCausalLM, hf_lib.Qwen3Config(**common, num_key_value_heads=2, head_dim=8)),
        "gemma2": (hf_lib.Gemma2ForCausalLM, hf_lib.Gemma2Config(
            **common, num_key_value_heads=2, head_dim=8, sliding_window=3, query_pre_attn_scalar=8,
            attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
        "gemma3": (hf_lib.Gemma3ForCausalLM, hf_lib.Gemma3TextConfig(
            **common, num_key_value_heads=2, head_dim=8, sliding_window=3, query_pre_attn_scalar=8,
            layer_types=["sliding_attention", "full_attention"])),
    }
    cls, cfg = configs[arch]
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
