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
