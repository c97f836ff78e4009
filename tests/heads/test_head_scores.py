from __future__ import annotations

import pytest
import torch
from transformer_lens.head_detector import detect_head

from circuitkit.heads import head_scores, repeated_tokens

TEXTS = ["the cat sat on a mat . the cat sat on a mat .", "dog ran far away . dog ran far away . big red"]


@pytest.mark.parametrize("kind,tl_name", [("previous_token", "previous_token_head"),
                                          ("duplicate_token", "duplicate_token_head"),
                                          ("induction", "induction_head")])
def test_detector_kinds_equal_transformer_lens(toy_model, kind, tl_name):
    ours = head_scores(toy_model, TEXTS, kind).head_grid()
    reference = detect_head(toy_model, TEXTS, tl_name).float()
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_wired_heads_have_their_signatures(toy_model):
    prev = head_scores(toy_model, None, "previous_token")
    assert {label for label, _ in prev.top(2, by_abs=False)} == {"a0.h0", "a1.h2"}
    assert prev["a0.h0"] > 0.9
    assert head_scores(toy_model, None, "induction").top(1, by_abs=False)[0][0] == "a1.h0"
    local = head_scores(toy_model, repeated_tokens(toy_model, seq_len=20, n_repeats=3), "locality", sink=2, window=3)
    # sink, self and previous-token heads keep all their mass local; the retrieval head does not
    for head in ("a0.h0", "a0.h1", "a0.h2", "a1.h1", "a1.h2"):
        assert local[head] == pytest.approx(1.0, abs=1e-6)
    assert local["a1.h0"] < 0.5
    assert local.meta["sink"] == 2 and local.meta["window"] == 3


def _slow_scores(model, tokens, kind, sink=4, window=8):
    """The obvious loops over queries and keys, one prompt at a time."""
    _, cache = model.run_with_cache(tokens)
    out = torch.zeros(len(tokens), model.cfg.n_layers, model.cfg.n_heads)
    for b, seq in enumerate(tokens.tolist()):
        for layer in range(model.cfg.n_layers):
            pattern = cache["pattern", layer][b]
            for h in range(model.cfg.n_heads):
                values = []
                for q in range(len(seq)):
                    if kind == "locality" and q >= sink + window:
                        values.append(sum(float(pattern[h, q, k]) for k in range(q + 1) if k < sink or q - k < window))
                    if kind == "echo" and seq[q] in seq[:q]:
                        values.append(sum(float(pattern[h, q, k]) for k in range(q) if seq[k] == seq[q]))
                out[b, layer, h] = sum(values) / len(values)
    return out


@pytest.mark.parametrize("kind", ["locality", "echo"])
def test_locality_and_echo_equal_slow_loops(word_tokenizer, kind):
    from tests.conftest import make_model

    model = make_model(word_tokenizer, attn_only=True, n_layers=2, n_heads=2, d_model=16, n_ctx=64, seed=3)
    tokens = repeated_tokens(model, n_prompts=3, seq_len=9, n_repeats=2, seed=1)
    fast = head_scores(model, tokens, kind, batch_size=2)
    slow = _slow_scores(model, tokens, kind)
    torch.testing.assert_close(fast.meta["per_prompt"], slow, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.head_grid(), slow.mean(0), atol=1e-5, rtol=0)


def test_task_input_uses_each_prompt_up_to_its_answer(toy_model, toy_task):
    scores = head_scores(toy_model, toy_task, "previous_token")
    one = head_scores(toy_model, toy_task.clean[:1, : int(toy_task.answer_pos[0]) + 1], "previous_token")
    torch.testing.assert_close(scores.meta["per_prompt"][0], one.meta["per_prompt"][0])
    assert scores.task == "needle"


def test_retrieval_kind_delegates(toy_model, toy_task):
    scores = head_scores(toy_model, toy_task, "retrieval")
    assert scores.method == "retrieval" and scores.meta["retrieval_heads"] == ["a1.h0"]


def test_bad_input(toy_model):
    with pytest.raises(ValueError, match="unknown head score kind 'copying'; choose one of"):
        head_scores(toy_model, None, "copying")
    with pytest.raises(ValueError, match="needs prompts longer than 12 tokens"):
        head_scores(toy_model, "the cat sat on a mat .", "locality", sink=4, window=8)
    with pytest.raises(ValueError, match="exceed model n_ctx=80"):
        head_scores(toy_model, torch.ones(1, 81, dtype=torch.long), "induction")
    with pytest.raises(ValueError, match="outside model vocabulary"):
        head_scores(toy_model, torch.full((1, 5), 10_000), "induction")
    with pytest.raises(ValueError, match="kind='retrieval' needs a needle task"):
        head_scores(toy_model, None, "retrieval")
    with pytest.raises(ValueError, match="exceeds model n_ctx=80"):
        repeated_tokens(toy_model, seq_len=40, n_repeats=2)


def test_repeated_tokens_refuse_a_prompt_count_that_cannot_fit_before_allocating():
    import circuitkit as ck
    from circuitkit.heads.patterns import repeated_tokens

    model = ck.load_model("zoo:induction-handbuilt")
    with pytest.raises(ValueError, match=r"n_prompts=1,000,000,000 is more than the 100,000 allowed.*GB"):
        repeated_tokens(model, n_prompts=1_000_000_000)
    with pytest.raises(ValueError, match="seq_len must be a positive whole number"):
        repeated_tokens(model, seq_len=0)
