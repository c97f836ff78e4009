"""Recipe ``needle-trained``: retrieve a multi-token, never-seen needle value from a 256-token
haystack of Python docstrings."""

from __future__ import annotations

import random
import re
import time

import torch

from circuitkit import names
from circuitkit.tasks.builders import NEEDLE_QUESTION, NEEDLE_TEMPLATE, build_task, needle_prompt
from circuitkit.tokenizers import continuation_ids, pad_id, python_docs_corpus
from circuitkit.zoo.training.cards import docs_bpe_tokenizer, finish_recipe
from circuitkit.zoo.training.loop import BatchFn, final_loss, new_model, train_model

# Rotary positions: retrieval is relative-position-free, and rotary lets mostly-short training rows
# carry over to 256-token prompts.
# Two layers: layer-0 heads that attend back to the needle sentence feed, through K-composition,
# the layer-1 heads that copy the value, a circuit exact ablation can pin down (docs/zoo.md).
NEEDLE_CFG = dict(n_layers=2, n_heads=4, d_model=128, d_head=32, attn_only=True, n_ctx=264,
                  normalization_type="LN", positional_embedding_type="rotary", rotary_dim=16)

# Task values: invented words that the docs BPE splits into several tokens (multi-token needles);
# training draws other invented words, so the task measures retrieval of unseen values.
NEEDLE_VALUES = ("zorbat", "quindle", "mafrex", "plovish", "trunkel", "yesbor", "gadwump", "snerkol")

# Training values are invented words over a broad alphabet, or real words of the corpus: the copy
# (OV) circuit only learns the tokens it sees as values.
_ONSETS = ("b c d f g h j k l m n p qu r s t v w x y z bl br ch cl cr dr fl fr gl gr pl pr sh sk sl sn "
           "sp st str th tr wh").split()

_CODAS = ("", "", "", "n", "r", "l", "sh", "x", "mp", "t", "k", "nd", "st")

def training_value(rng: random.Random, corpus_words: list[str]) -> str:
    """A needle value for training: half invented (2-3 syllables), half a random corpus word."""
    if corpus_words and rng.random() < 0.5:
        return rng.choice(corpus_words)
    return "".join(rng.choice(_ONSETS) + rng.choice("aeiou") + rng.choice(_CODAS) for _ in range(rng.randint(2, 3)))

def needle_values(tok, values=NEEDLE_VALUES) -> list[str]:
    """The task values that tokenize to >= 2 tokens after the question, with distinct first tokens."""
    kept, firsts = [], set()
    for v in values:
        ids = continuation_ids(tok, NEEDLE_QUESTION, v)
        if len(ids) >= 2 and ids[0] not in firsts:
            kept.append(v)
            firsts.add(ids[0])
    return kept

def needle_batch(tok, hay_ids: list[int], batch: int = 16, min_len: int = 32, max_len: int = 256,
                 exclude: tuple[str, ...] = NEEDLE_VALUES, corpus_words: list[str] | None = None) -> BatchFn:
    """Prompts exactly as the ``needle`` builder makes them (needle sentence at a random depth of a
    random slice of Python docstrings, then the question), one random length per batch (mostly short),
    each with
    an invented multi-token value; the value's tokens are appended and are the only targets."""
    pad = pad_id(tok)

    def batch_fn(rng: random.Random):
        # Short rows are cheap and teach retrieval fast; long ones are rarer (length ~ min + u^2 range).
        length = min_len + int(rng.random() ** 2 * (max_len - min_len) / 8) * 8
        rows, ends = [], []
        while len(rows) < batch:
            value = training_value(rng, corpus_words or [])
            if value in exclude:
                continue
            start = rng.randrange(0, len(hay_ids) - length)
            built = needle_prompt(tok, hay_ids[start: start + length], length, rng.random(), value,
                                   NEEDLE_TEMPLATE, NEEDLE_QUESTION, True)
            if built is None:
                continue
            ids, _, _, value_ids, _ = built
            rows.append(ids + value_ids)
            ends.append((len(ids) - 1, len(value_ids)))
        width = max(len(r) for r in rows)
        mask = torch.zeros(batch, width, dtype=torch.bool)
        for i, (end, n) in enumerate(ends):
            mask[i, end: end + n] = True
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows]), mask
    return batch_fn

def needle_trained(seed: int = 0, progress: bool = True, steps: int | None = None, circuit: bool = True):
    """2-layer attention-only model trained to answer the needle question with the needle's
    (multi-token, never-seen) value from anywhere in a 256-token docstring haystack."""
    t0 = time.time()
    tok = docs_bpe_tokenizer()
    text = python_docs_corpus()
    hay_ids = tok.encode(text[60_000:], add_special_tokens=False)  # the task's haystack is text[:60000]
    corpus_words = sorted(set(re.findall(r"\b[a-z]{4,10}\b", text[60_000:])))
    model = new_model(tok, **NEEDLE_CFG, seed=seed, model_name="needle-trained")
    steps = steps or 3000
    lr = 1e-3
    losses = train_model(model, needle_batch(tok, hay_ids, corpus_words=corpus_words), steps, lr, seed, progress,
                         desc="needle-trained")
    values = needle_values(tok)
    task_spec = {"builder": "needle",
                 "params": {"context_lengths": [256], "depths": [0.0, 0.25, 0.5, 0.75, 1.0], "values": values},
                 "metric": "answer_prob"}
    recipe = {"steps": steps, "lr": lr, "batch": 16, "seed": seed, "optimizer": "AdamW(0.9, 0.98), warm-up + cosine",
              "data": "needle-builder prompts of 32..256 tokens (one length per batch, length = 32 + u^2 * 224) over Python docstrings after "
                      "the first 60k characters (the task's haystack), needle at a uniform random depth, value "
                      "an invented 2-3 syllable word over 41 onsets or (half the time) a random 4-10 letter word of "
                      "that text, never a task value; loss on the value's tokens",
              "final_loss": final_loss(losses)}
    model.eval()
    out = finish_recipe("needle-trained", "2-layer attention-only model (n_ctx 264) trained to retrieve a multi-token "
                  "needle value from a 256-token haystack of Python docstrings.", model, tok, task_spec, recipe,
                  {}, progress, t0, circuit)
    if circuit:
        task = build_task("needle", tok, **task_spec["params"])
        out[2].evidence["retrieval_heads"] = value_attending_heads(model, task)
    return out

def value_attending_heads(model, task, threshold: float = 0.3) -> dict[str, float]:
    """Heads whose attention from the question's end lands on the needle's value tokens (mean
    attention mass over prompts >= ``threshold``): the heads that do the retrieval."""
    with torch.no_grad():
        _, cache = model.run_with_cache(task.clean, names_filter=lambda n: n.endswith("hook_pattern"))
    batch = torch.arange(task.clean.shape[0])
    start, end = task.positions["needle_start"], task.positions["needle_end"]
    span = torch.zeros(task.clean.shape, dtype=torch.bool)
    for i in range(len(batch)):
        span[i, start[i]: end[i] + 1] = True  # the value and the token after it
    out = {}
    for layer in range(model.cfg.n_layers):
        pattern = cache[names.hook("pattern", layer)][batch, :, task.answer_pos]  # [batch, head, key]
        mass = (pattern * span[:, None, :]).sum(-1).mean(0)
        for h in range(model.cfg.n_heads):
            if float(mass[h]) >= threshold:
                out[names.head(layer, h)] = round(float(mass[h]), 4)
    return out
