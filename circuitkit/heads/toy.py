"""A tiny hand-wired retrieval model whose retrieval heads are known exactly (tests and demos).

``copy_retrieval_model`` builds a 2-layer attention-only ``HookedTransformer`` over a small
word-level vocabulary. Its residual stream is split into one-hot subspaces
``[token | position | previous token | output]``:

* ``a0.h0`` is a previous-token head (attends from ``i`` to ``i - 1``) writing the previous
  token into the "previous token" subspace;
* ``a1.h0`` is an induction-style retrieval head: the query is the current token, the key the
  previous token, so at the question's final ``is`` it attends to the needle value right after
  the needle's ``is`` and copies it to the output subspace, which alone feeds the unembedding;
  at the next step the same rule fetches the value's next token;
* the other heads attend to the first token (sink), to themselves (local) or uniformly, and
  write nothing.

So on needle prompts built with `toy_needle_task` the model answers every prompt exactly,
and the only retrieval head is ``a1.h0``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from circuitkit.tasks.builders import needle
from circuitkit.tokenizers import word_level_tokenizer

HAYSTACK_WORDS = ("the cat sat on a mat and dog ran far away from big red house near old tree "
                  "under blue sky with green grass").split()
NEEDLE_WORDS = ("The", "secret", "code", "is", "Recall", ".")
TOY_VALUES = ("42 19", "88 7", "31 64", "5 23")
TOY_QUESTION = "Recall the secret code . The secret code is"
RETRIEVAL_HEADS = ("a1.h0",)
SHARPNESS = 30.0  # attention logit of a match; e^30 makes every pattern effectively one-hot


def toy_vocabulary(values: Sequence[str] = TOY_VALUES) -> list[str]:
    # Single digits plus the values' two-digit chunks keep the vocabulary (and d_model) small.
    chunks = {w for value in values for w in value.split()} | {str(i) for i in range(10)}
    return [*HAYSTACK_WORDS, *NEEDLE_WORDS, *sorted(chunks)]


def toy_tokenizer(values: Sequence[str] = TOY_VALUES):
    """Word-level tokenizer over the toy words and the chunks of ``values`` (space-separated
    one- or two-digit numbers; each value's chunks must be distinct for the toy to retrieve it)."""
    return word_level_tokenizer(toy_vocabulary(values))


def toy_haystack(n_words: int = 600, seed: int = 0) -> str:
    """Random haystack sentences (no ``is``, no digits), a ``.`` every 5-9 words."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n_words:
        out += [rng.choice(HAYSTACK_WORDS) for _ in range(rng.randint(5, 9))] + ["."]
    return " ".join(out)


def toy_needle_task(model_or_tokenizer, context_lengths: Sequence[int] = (32, 64),
                    depths: Sequence[float] = (0.0, 0.5, 1.0), values: Sequence[str] = TOY_VALUES):
    """A needle task the toy model solves: multi-token values, question without other ``is``."""
    return needle(model_or_tokenizer, context_lengths=context_lengths, depths=depths, values=values,
                  question=TOY_QUESTION, haystack=toy_haystack(), metric="accuracy")


def copy_retrieval_model(tokenizer=None, n_ctx: int = 160, n_heads: int = 4):
    """The hand-wired model described in the module docstring (``d_model = 3 * vocab + n_ctx``)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = tokenizer if tokenizer is not None else toy_tokenizer()
    vocab = len(tok)
    tok_at, pos_at, prev_at, out_at = 0, vocab, vocab + n_ctx, 2 * vocab + n_ctx
    d_model = 3 * vocab + n_ctx
    d_head = max(vocab, n_ctx)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=d_model, d_head=d_head, n_heads=n_heads, d_vocab=vocab, n_ctx=n_ctx,
        attn_only=True, normalization_type=None, use_attn_scale=False, act_fn="relu",
        model_name="toy-copy-retrieval", device="cpu", seed=0,
    )
    model = HookedTransformer(cfg, tokenizer=tok)
    state = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    rows_t, rows_p = torch.arange(vocab), torch.arange(n_ctx)
    state["embed.W_E"][rows_t, tok_at + rows_t] = 1.0
    state["pos_embed.W_pos"][rows_p, pos_at + rows_p] = 1.0

    def query_position(layer, head, offset):
        # Query at i meets key at j when j + offset == i.
        state[f"blocks.{layer}.attn.W_Q"][head, pos_at + rows_p, rows_p] = SHARPNESS
        keep = rows_p + offset < d_head
        state[f"blocks.{layer}.attn.W_K"][head, pos_at + rows_p[keep], (rows_p + offset)[keep]] = 1.0

    def sink(layer, head):
        state[f"blocks.{layer}.attn.W_Q"][head, pos_at + rows_p, 0] = SHARPNESS
        state[f"blocks.{layer}.attn.W_K"][head, pos_at + 0, 0] = 1.0

    # Layer 0: previous-token head writes the previous token; sink and self heads write nothing.
    query_position(0, 0, 1)
    state["blocks.0.attn.W_V"][0, tok_at + rows_t, rows_t] = 1.0
    state["blocks.0.attn.W_O"][0, rows_t, prev_at + rows_t] = 1.0
    sink(0, 1)
    query_position(0, 2, 0)
    # Layer 1: the retrieval head (current token == key's previous token) copies the key's token.
    state["blocks.1.attn.W_Q"][0, tok_at + rows_t, rows_t] = SHARPNESS
    state["blocks.1.attn.W_K"][0, prev_at + rows_t, rows_t] = 1.0
    state["blocks.1.attn.W_V"][0, tok_at + rows_t, rows_t] = 1.0
    state["blocks.1.attn.W_O"][0, rows_t, out_at + rows_t] = 1.0
    sink(1, 1)
    query_position(1, 2, 1)
    state["unembed.W_U"][out_at + rows_t, rows_t] = 1.0
    model.load_state_dict(state, strict=False)  # buffers (causal masks) keep their values
    model.eval()
    return model
