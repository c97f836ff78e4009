"""Recipe ``tiny-lm``: a 2-layer attention-only language model on Python's docstrings whose
induction heads form in a copying phase and survive a text phase."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from circuitkit.ablation.nodes import ablation_hooks
from circuitkit.tokenizers import bos_id, ordinary_token_ids
from circuitkit.zoo.training.cards import docs_bpe_tokenizer, finish_recipe
from circuitkit.zoo.training.data import (
    CopyCurriculum,
    MixedBatches,
    docs_token_split,
    frequency_ranked,
    text_batch,
)
from circuitkit.zoo.training.loop import final_loss, new_model, train_model

# Attention-only with learned positions: the configuration in which the copying phase below forms
# induction heads within the recipe's budget (docs/zoo.md).
TINY_LM_CFG = dict(n_layers=2, n_heads=4, d_model=128, d_head=32, attn_only=True, n_ctx=128,
                   normalization_type="LN")

def validation_loss(model, ids: Tensor, length: int = 128, n_windows: int = 64) -> float:
    """Mean next-token loss over evenly spaced windows of held-out tokens."""
    starts = torch.linspace(0, len(ids) - length - 1, n_windows).long()
    tokens = torch.stack([ids[s: s + length] for s in starts])
    with torch.no_grad():
        return float(model(tokens, return_type="loss"))

def repeated_text_losses(model, ids: Tensor, half: int = 64, n_rows: int = 16,
                         ablated: list[str] | None = None) -> tuple[float, float]:
    """Mean loss on the first and on the second copy of text windows written twice
    (``[n_rows, 2 * half]`` rows): an induction circuit makes the second copy far easier.
    ``ablated``: components (``a1.h2``...) mean-ablated, means over these rows."""
    starts = torch.linspace(0, len(ids) - half - 1, n_rows).long()
    rows = torch.stack([torch.cat([ids[s: s + half], ids[s: s + half]]) for s in starts])
    hooks = ablation_hooks(model, ablated, "mean", rows) if ablated else []
    with torch.no_grad():
        loss = model.run_with_hooks(rows, return_type="loss", loss_per_token=True, fwd_hooks=hooks)  # [row, pos - 1]
    return float(loss[:, : half - 1].mean()), float(loss[:, half:].mean())

def tiny_lm(seed: int = 0, progress: bool = True, steps: int | None = None, circuit: bool = True):
    """2-layer attention-only language model (d_model 128, BPE 2048) on Python's docstrings, with
    induction heads: a copying phase forms them, a text phase (still 1/5 copying) keeps them."""
    t0 = time.time()
    tok = docs_bpe_tokenizer()
    train_ids, val_ids = docs_token_split(tok)
    model = new_model(tok, **TINY_LM_CFG, seed=seed, model_name="tiny-lm")
    steps = steps or 5000
    copy_steps = max(1, steps // 2)  # half copying, half text
    text_steps = max(1, steps - copy_steps)
    copy_lr, text_lr, copy_share = 1e-3, 3e-3, 0.2
    copying = CopyCurriculum(frequency_ranked(train_ids, ordinary_token_ids(tok)), bos_id(tok))
    # Phase 1 stops half-way down its cosine (lr 5e-4): the circuit forms at about step 1500-2000.
    copy_losses = train_model(model, copying, copy_steps, copy_lr, seed, progress, desc="tiny-lm copying",
                              weight_decay=0.01, horizon=2 * copy_steps)
    copy_grown = list(copying.grown_at)
    losses = train_model(model, MixedBatches(text_batch(train_ids), copying, copy_share), text_steps, text_lr,
                         seed, progress, desc="tiny-lm text", weight_decay=0.01)
    val = validation_loss(model, val_ids)
    first, second = repeated_text_losses(model, val_ids)
    task_spec = {"builder": "induction", "params": {"n_prompts": 64, "seq_len": 10, "seed": 0}, "metric": "logit_diff"}
    recipe = {"steps": copy_steps + text_steps, "seed": seed, "weight_decay": 0.01,
              "optimizer": "AdamW(0.9, 0.98), warm-up + cosine, per phase",
              "phases": [
                  {"steps": copy_steps, "lr": copy_lr, "cosine_horizon": 2 * copy_steps, "batch": 32,
                   "data": "copying: 100-token rows BOS, random prefix, a random segment of 6..40 tokens, the "
                           "segment again, random tokens; tokens from the k most frequent training tokens, k from "
                           "228 doubling whenever the last 50 batches' mean loss < ln(k) / 2; loss on the second "
                           "copy but its first token",
                   "pool_doubled_at_batch": copy_grown,
                   "final_loss": final_loss(copy_losses)},
                  {"steps": text_steps, "lr": text_lr, "batch": 16,
                   "data": f"each step a batch of 16 random 128-token windows of the training text, or (probability "
                           f"{copy_share}) a copying batch as in phase 1",
                   "final_loss": final_loss(losses)}],
              "data": f"python_docs_corpus() (Python stdlib docstrings, {len(train_ids) + len(val_ids)} BPE tokens), "
                      "first 95% for training, last 5% held out",
              "validation_loss": round(val, 4), "validation_tokens": int(len(val_ids)),
              "held_out_text_twice_loss": {"first_copy": round(first, 4), "second_copy": round(second, 4)}}
    return finish_recipe("tiny-lm", "2-layer attention-only language model (d_model 128, byte-level BPE 2048) trained on "
                   "Python's docstrings, with induction heads (a copying phase, then text); a base for SAE "
                   "features.", model, tok, task_spec, recipe, {}, progress, t0, circuit)
