"""How each zoo model is (re)built: ``RECIPES[name](seed=..., progress=...) -> (model, tokenizer, card)``.

Hand-built models are set by construction (`circuitkit.zoo.handbuilt`); trained models by
their recipes (`circuitkit.zoo.training`); tracr models are compiled RASP programs
(`circuitkit.zoo.tracr`, needs the ``tracr`` extra). The SAEs a model ships with (its
``saes/`` folder) are rebuilt with it from `circuitkit.zoo.sae_recipes.SAE_RECIPES`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from circuitkit.errors import InputError
from circuitkit.models.zoo_store import save_zoo_model, user_zoo_dir
from circuitkit.zoo import handbuilt, tracr, training
from circuitkit.zoo.sae_recipes import build_saes, write_saes

Builder = Callable[..., tuple[Any, Any, Any]]  # (seed=0, progress=True) -> (model, tokenizer, ZooCard)

RECIPES: dict[str, Builder] = {
    "induction-handbuilt": handbuilt.build_induction,
    "retrieval-handbuilt": handbuilt.build_retrieval,
    **training.RECIPES,
    **tracr.RECIPES,
}


def check_recipe(name: str) -> None:
    if name not in RECIPES:
        raise InputError(f"no recipe for zoo model {name!r}; known recipes: {sorted(RECIPES)}")


def build(name: str, seed: int | None = None, progress: bool = True):
    """Rebuild zoo model ``name`` from its recipe; ``(model, tokenizer, card)``. ``seed=None`` uses
    the recipe's default (the seed the shipped weights were made with)."""
    check_recipe(name)
    kwargs: dict[str, Any] = {"progress": progress}
    if seed is not None:
        kwargs["seed"] = int(seed)
    return RECIPES[name](**kwargs)


def train(name: str, root: str | Path | None = None, seed: int | None = None, progress: bool = True,
          saes: bool = True) -> Path:
    """Rebuild zoo model ``name`` and save it (atomically) under ``root``; returns the model's folder.

    With ``saes`` (default) the model's ``saes/`` folder is rebuilt too, on the model just built,
    from its recipe (`SAE_RECIPES`: analytic for
    ``induction-handbuilt``, top-k training for ``tiny-lm``, a few minutes); weights, card,
    tokenizer and SAEs replace the old folder in one rename. ``saes=False`` writes the model
    alone (a model with SAE recipe then has no ``saes/``).

    ``root`` defaults to the user's zoo folder (`user_zoo_dir`),
    which the zoo searches before the bundled models: an installed package is never written into.
    """
    check_recipe(name)  # before any work starts
    model, tokenizer, card = build(name, seed=seed, progress=progress)
    dictionaries = build_saes(name, model, card, progress=progress) if saes else {}
    return save_zoo_model(model, card, tokenizer, root=Path(root) if root is not None else user_zoo_dir(),
                          extra=lambda folder: write_saes(dictionaries, folder))
