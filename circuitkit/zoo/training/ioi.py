"""Recipe ``ioi-trained``: a 3-layer transformer with MLPs trained on templated IOI sentences."""

from __future__ import annotations

import random
import time

import torch

from circuitkit.tasks.builders import IOI_TEMPLATES, NAMES, OBJECTS, PLACES
from circuitkit.tokenizers import encode, pad_id
from circuitkit.zoo.training.cards import finish_recipe, zoo_word_tokenizer
from circuitkit.zoo.training.loop import BatchFn, new_model, train_model

IOI_CFG = dict(n_layers=3, n_heads=4, d_model=64, d_mlp=256, n_ctx=32, normalization_type="LN")

def ioi_batch(tok, batch: int = 64) -> BatchFn:
    """Templated IOI sentences (the ``ioi`` builder's templates, names, places, objects; ABBA and
    BABA equally often) followed by the indirect object; the loss is on that final name."""
    pad = pad_id(tok)

    def batch_fn(rng: random.Random):
        rows = []
        for _ in range(batch):
            io, s = rng.sample(NAMES, 2)
            first, second = (io, s) if rng.random() < 0.5 else (s, io)
            text = rng.choice(IOI_TEMPLATES).format(A=first, B=second, C=s, PLACE=rng.choice(PLACES),
                                                    OBJECT=rng.choice(OBJECTS))
            rows.append(encode(tok, f"{text} {io}", True))
        width = max(len(r) for r in rows)
        mask = torch.zeros(batch, width, dtype=torch.bool)
        for i, r in enumerate(rows):
            mask[i, len(r) - 2] = True
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows]), mask
    return batch_fn

def ioi_trained(seed: int = 0, progress: bool = True, steps: int | None = None, circuit: bool = True):
    """3-layer transformer with MLPs trained to complete IOI sentences with the indirect object."""
    t0 = time.time()
    tok = zoo_word_tokenizer()
    model = new_model(tok, **IOI_CFG, seed=seed, model_name="ioi-trained")
    steps = steps or 1500
    lr = 1e-3
    losses = train_model(model, ioi_batch(tok), steps, lr, seed, progress, desc="ioi-trained")
    task_spec = {"builder": "ioi", "params": {"n_prompts": 64, "seed": 0}, "metric": "logit_diff"}
    recipe = {"steps": steps, "lr": lr, "batch": 64, "seed": seed, "optimizer": "AdamW(0.9, 0.98), warm-up + cosine",
              "data": "ioi builder templates x NAMES x PLACES x OBJECTS, ABBA/BABA 50/50, random each step; "
                      "loss on the final (indirect-object) name only",
              "final_loss": round(sum(losses[-20:]) / 20, 4) if len(losses) >= 20 else losses[-1]}
    return finish_recipe("ioi-trained", "3-layer transformer with MLPs trained on templated IOI sentences (ABBA and BABA).",
                   model, tok, task_spec, recipe, {}, progress, t0, circuit)
