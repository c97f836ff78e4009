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
