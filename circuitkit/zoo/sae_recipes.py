"""The SAEs shipped with zoo models and how each set is rebuilt: one recipe per model, here only.

A zoo model folder may hold ``saes/<hook_name>/`` (SAELens format: ``cfg.json`` +
``sae_weights.safetensors``). ``SAE_RECIPES[name]`` says how that folder is made:

* ``induction-handbuilt``: analytic, set by construction from the card's residual layout
  (`circuitkit.zoo.feature_saes.build_induction_saes`);
* ``tiny-lm``: top-k SAEs trained with SAELens (`circuitkit.sae.train.train_sae`) on the
  Python-docstring corpus (``training_tokens(model, None, context_size)``: the first 800,000
  characters of `circuitkit.tokenizers.python_docs_corpus`), one per hook, each with the
  same hyperparameters and seed. On CPU the training is deterministic: the recipe reproduces the
  shipped weights bit for bit (``benchmarks/zoo_saes.py``), as long as the corpus is the same
  (it is read from the installed Python's standard library).

`circuitkit.zoo.recipes.train` calls `build_saes` and writes the folder together
with the model (one atomic folder replacement).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from circuitkit import names
from circuitkit.sae.train import SAETrainConfig, save_sae, train_sae
from circuitkit.zoo.feature_saes import SAE_DIR, build_induction_saes


@dataclass(frozen=True)
class AnalyticSAEs:
    """SAEs set by construction: ``builder(card) -> {hook_name: SAE}``."""

    builder: Callable[[Any], dict[str, Any]]

    def build(self, model, card, progress: bool = True) -> dict[str, Any]:
        return self.builder(card)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "analytic", "builder": f"{self.builder.__module__}.{self.builder.__name__}"}


@dataclass(frozen=True)
class TrainedSAEs:
    """SAEs trained with SAELens, one per hook, all with the same hyperparameters and seed.

    ``corpus``: what `circuitkit.sae.train.train_sae` reads (None: the Python-docstring
    corpus, cut into rows of ``config.context_size`` tokens).
    """

    hooks: tuple[str, ...]
    architecture: str
    d_sae: int
    config: SAETrainConfig
    corpus: Any = None

    def build(self, model, card=None, progress: bool = True) -> dict[str, Any]:
        out = {}
        for hook in tqdm(self.hooks, desc=f"training SAEs of {model.cfg.model_name}", disable=not progress,
                         leave=False):
            out[hook] = train_sae(model, hook, self.corpus, self.architecture, self.d_sae, config=self.config,
                                  progress=progress)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"kind": "trained", "hooks": list(self.hooks), "architecture": self.architecture,
                "d_sae": self.d_sae, **dataclasses.asdict(self.config),
                "corpus": "python_docs_corpus(800_000)" if self.corpus is None else str(self.corpus)}


# `circuitkit sae train zoo:tiny-lm --hook HOOK --arch topk --d-sae 512 --k 16 --steps 1500` per hook
# (the other hyperparameters at SAETrainConfig's defaults) made the shipped tiny-lm SAEs.
TINY_LM_SAES = TrainedSAEs(
    hooks=(names.hook("resid_pre", 0), names.hook("resid_pre", 1), names.hook("resid_post", 1)),
    architecture="topk", d_sae=512,
    config=SAETrainConfig(k=16, steps=1500, batch_size_tokens=1024, context_size=64, lr=1e-3, seed=0),
)

SAE_RECIPES: dict[str, AnalyticSAEs | TrainedSAEs] = {
    "induction-handbuilt": AnalyticSAEs(build_induction_saes),
    "tiny-lm": TINY_LM_SAES,
}


def build_saes(name: str, model, card, progress: bool = True) -> dict[str, Any]:
    """``{hook_name: SAE}`` for zoo model ``name`` (``model`` and ``card`` as its recipe just built
    them); empty for a model that ships no SAEs."""
    recipe = SAE_RECIPES.get(name)
    return {} if recipe is None else recipe.build(model, card, progress=progress)


def write_saes(saes: dict[str, Any], model_folder: str | Path) -> list[Path]:
    """Save ``saes`` as ``model_folder/saes/<hook_name>/`` (each folder written atomically)."""
    root = Path(model_folder) / SAE_DIR
    return [save_sae(sae, root / hook) for hook, sae in saes.items()]
