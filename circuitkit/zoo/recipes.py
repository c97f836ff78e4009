"""How each zoo model is (re)built: ``RECIPES[name](seed=..., progress=...) -> (model, tokenizer, card)``.

Hand-built models are set by construction; trained models (``circuitkit.zoo.training``, when
present) add their own recipes to the same table.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from circuitkit.zoo import handbuilt

Builder = Callable[..., tuple[Any, Any, Any]]  # (seed=0, progress=True) -> (model, tokenizer, ZooCard)

RECIPES: dict[str, Builder] = {
    "induction-handbuilt": handbuilt.build_induction,
    "retrieval-handbuilt": handbuilt.build_retrieval,
}

# Trained models register theirs in circuitkit/zoo/training.py as a RECIPES dict of the same shape.
if importlib.util.find_spec("circuitkit.zoo.training") is not None:
    RECIPES.update(importlib.import_module("circuitkit.zoo.training").RECIPES)


def build(name: str, seed: int | None = None, progress: bool = True):
    """Rebuild zoo model ``name`` from its recipe; ``(model, tokenizer, card)``. ``seed=None`` uses
    the recipe's default (the seed the shipped weights were made with)."""
    if name not in RECIPES:
        raise ValueError(f"no recipe for zoo model {name!r}; known recipes: {sorted(RECIPES)}")
    kwargs: dict[str, Any] = {"progress": progress}
    if seed is not None:
        kwargs["seed"] = int(seed)
    return RECIPES[name](**kwargs)


def train(name: str, root: str | Path | None = None, seed: int | None = None, progress: bool = True) -> Path:
    """Rebuild zoo model ``name`` and save it (atomically) under ``root`` (default: the bundled
    ``data/zoo``); returns the model's folder."""
    from circuitkit.zoo.registry import save_zoo_model

    if name not in RECIPES:  # checked before any work starts
        raise ValueError(f"no recipe for zoo model {name!r}; known recipes: {sorted(RECIPES)}")
    model, tokenizer, card = build(name, seed=seed, progress=progress)
    return save_zoo_model(model, card, tokenizer, root=Path(root) if root is not None else None)
