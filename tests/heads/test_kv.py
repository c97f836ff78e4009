"""KV-cache policies: exact eviction (evicted tokens carry nothing), the cache share by hand, and the
RazorAttention split against the known retrieval head of the hand-built needle model."""

import pytest
import torch
from model_factory import make_model

import circuitkit as ck
from circuitkit.heads.kv import KVPolicy, kv_kept_share, needle_grid, run_with_kv_policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_an_evicted_token_carries_nothing_to_a_streamed_head(word_tokenizer):
    """One attention layer, every head streaming: the last position's logits do not depend on the
    tokens outside its sink and window (changing them changes nothing), and do depend on one inside."""
    model = make_model(word_tokenizer, n_layers=1, attn_only=True, seed=3)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, model.cfg.d_vocab, (3, 30), generator=gen)
    policy = KVPolicy(frozenset(), sink=2, window=5)
    base = run_with_kv_policy(model, tokens, policy)[:, -1]
    evicted = tokens.clone()
    evicted[:, 2:25] = torch.randint(4, model.cfg.d_vocab, (3, 23), generator=gen)  # positions 2..24: outside
    torch.testing.assert_close(run_with_kv_policy(model, evicted, policy)[:, -1], base, atol=1e-5, rtol=0)
    inside = tokens.clone()
    inside[:, 26] = (tokens[:, 26] + 1 - 4) % (model.cfg.d_vocab - 4) + 4
    assert not torch.allclose(run_with_kv_policy(model, inside, policy)[:, -1], base, atol=1e-4)
    with torch.no_grad():  # full cache, or a window covering every token: the plain model
        plain = model(tokens)
    every = frozenset(ck.names.head(0, h) for h in range(model.cfg.n_heads))
    torch.testing.assert_close(run_with_kv_policy(model, tokens, KVPolicy(every)), plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(run_with_kv_policy(model, tokens, KVPolicy(frozenset(), 0, 30)), plain, atol=1e-6, rtol=0)


def test_the_cache_share_counts_key_value_heads(word_tokenizer):
    model = ck.load_model("zoo:retrieval-handbuilt")  # 2 layers x 4 heads
    policy = KVPolicy.razor(model, ["a1.h0"], sink=4, window=16)
    assert kv_kept_share(model, policy, 128) == pytest.approx((128 + 7 * 20) / (8 * 128))
    gqa = make_model(word_tokenizer, n_layers=1, n_heads=4, n_key_value_heads=2, normalization_type="RMS",
                     positional_embedding_type="rotary")
    with pytest.raises(ValueError, match=r"share one key / value head, so one KV cache"):
        KVPolicy.razor(gqa, ["a0.h0"])
    assert kv_kept_share(gqa, KVPolicy.razor(gqa, ["a0.h0", "a0.h1"], 0, 8), 32) == pytest.approx((32 + 8) / 64)


def test_keeping_the_retrieval_head_keeps_the_needle_and_keeping_another_loses_it():
    """RazorAttention on the hand-built needle model: the known retrieval head a1.h0 in full, the
    rest streaming (about a quarter of the cache), finds every needle; any other head in full
    finds only the needles inside the window."""
    model = ck.load_model("zoo:retrieval-handbuilt")
    params = {k: v for k, v in ck.zoo_card("retrieval-handbuilt").task["params"].items()
              if k in ("values", "haystack", "needle_template", "question")}
    lengths, depths = (128, 256), (0.0, 0.5, 1.0)
    full = needle_grid(model, None, lengths, depths, **params)
    razor = needle_grid(model, KVPolicy.razor(model, ["a1.h0"], 4, 16), lengths, depths, **params)
    other = needle_grid(model, KVPolicy.razor(model, ["a0.h1"], 4, 16), lengths, depths, **params)
    assert (full.accuracy == 1).all() and (full.kv_kept == 1).all()
    assert (razor.accuracy == 1).all() and (razor.kv_kept < 0.3).all()
    assert (other[other.depth < 1].accuracy == 0).all() and (other[other.depth == 1].accuracy == 1).all()
