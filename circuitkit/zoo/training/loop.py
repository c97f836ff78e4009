"""The training loop every trained recipe shares: AdamW with warm-up and cosine decay on next-token
loss at masked positions."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from circuitkit.errors import InputError

# batch_fn(generator) -> (tokens [batch, pos], loss_mask [batch, pos]): mask marks positions
# whose NEXT token is a training target.
BatchFn = Callable[[random.Random], tuple[Tensor, Tensor]]

def train_model(model, batch_fn: BatchFn, steps: int, lr: float, seed: int = 0, progress: bool = True,
                desc: str = "train", weight_decay: float = 0.0, warmup: int = 50,
                horizon: int | None = None) -> list[float]:
    """Adam with linear warm-up and cosine decay on next-token loss at masked positions.

    The cosine reaches 0 after ``horizon`` steps (default ``steps``; a longer horizon stops
    training part-way down the curve). A ``batch_fn`` with an ``observe(loss)`` method is told
    every step's loss (for curricula that adapt to it). Returns the loss of every step.
    """
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    horizon = horizon or steps
    if horizon < steps:
        raise InputError(f"horizon must be >= steps ({steps}), got {horizon}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, horizon) / horizon)))
    observe = getattr(batch_fn, "observe", None)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=2.0)
    for _ in bar:
        tokens, mask = batch_fn(rng)
        keep = mask[:, :-1]
        loss = F.cross_entropy(_logits_at(model, tokens[:, :-1], keep), tokens[:, 1:][keep])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if observe is not None:
            observe(losses[-1])
        if len(losses) % 25 == 0:
            bar.set_postfix(loss=f"{sum(losses[-25:]) / 25:.3f}")
    model.eval()
    return losses

def final_loss(losses: list[float], last: int = 20) -> float:
    """The mean of the last ``last`` training losses, rounded for a card."""
    return round(sum(losses[-last:]) / len(losses[-last:]), 4)

def new_model(tokenizer, **cfg_kwargs):
    """A fresh HookedTransformer with ``tokenizer`` (seeded by ``cfg_kwargs['seed']``)."""
    from transformer_lens import (  # TransformerLens 3 only
        HookedTransformer,
        HookedTransformerConfig,
    )

    cfg = dict(d_vocab=len(tokenizer), act_fn="gelu", normalization_type="LN", device="cpu",
               default_prepend_bos=True)
    cfg.update(cfg_kwargs)
    if "d_head" not in cfg:
        cfg["d_head"] = cfg["d_model"] // cfg["n_heads"]
    model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tokenizer)
    return model

def task_accuracy(model, task) -> float:
    with torch.no_grad():
        return float(task.with_metric("accuracy").score(model(task.clean)))

def _logits_at(model, tokens: Tensor, keep: Tensor) -> Tensor:
    """Logits ``[n_kept, vocab]`` at the ``keep`` positions only (unembedding every position of a
    long context costs more than the rest of the model)."""
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    picked = resid[keep][None]
    if model.cfg.normalization_type is not None:
        picked = model.ln_final(picked)
    return model.unembed(picked)[0]
