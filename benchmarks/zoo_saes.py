"""Do the zoo's SAE recipes reproduce the shipped SAEs? (``circuitkit.zoo.sae_recipes``)

For each zoo model with an SAE recipe (``--models``; default ``tiny-lm induction-handbuilt``):
rebuild its SAEs on the *shipped* model (``zoo:NAME``; ``zoo train NAME`` rebuilds the model
too, which for tiny-lm takes about 11 minutes more) from the recipe, and compare every tensor with
the shipped ``data/zoo/NAME/saes/<hook>/`` (max |difference|, and whether it is bit-identical);
prints the wall time per SAE. The training corpus is read from the installed Python's standard
library, so a different Python may give a different corpus and different SAEs.

Run:

    OMP_NUM_THREADS=1 python benchmarks/zoo_saes.py [--models tiny-lm]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import pandas as pd

from circuitkit.models import load_model
from circuitkit.models.zoo_store import zoo_card
from circuitkit.sae.train import load_sae
from circuitkit.zoo.feature_saes import SAE_DIR
from circuitkit.zoo.sae_recipes import SAE_RECIPES, TrainedSAEs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny-lm", "induction-handbuilt"])
    args = parser.parse_args()
    rows = []
    for name in args.models:
        card = zoo_card(name)
        model = load_model(f"zoo:{name}", device="cpu")
        recipe = SAE_RECIPES[name]
        hooks = recipe.hooks if isinstance(recipe, TrainedSAEs) else None
        for hook in hooks or [None]:
            one = dataclasses.replace(recipe, hooks=(hook,)) if hook is not None else recipe
            start = time.perf_counter()
            built = one.build(model, card, progress=False)
            seconds = time.perf_counter() - start
            for h, sae in built.items():
                shipped = load_sae(card.path / SAE_DIR / h).state_dict()
                new = sae.state_dict()
                assert sorted(new) == sorted(shipped), (sorted(new), sorted(shipped))
                diff = max(float((new[k] - shipped[k]).abs().max()) for k in shipped)
                rows.append({"model": name, "hook": h, "seconds": round(seconds / len(built), 1),
                             "max_abs_diff": diff, "identical": all(new[k].equal(shipped[k]) for k in shipped)})
                print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
