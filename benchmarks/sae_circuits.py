"""Discrete-SAE circuit identification (O'Neill & Bui 2024) against the zoo's reference circuits.

For every zoo model whose card names a reference circuit with attention heads, score all heads
with :func:`circuitkit.sae.discrete_sae_head_scores` (positive prompts: the task's clean prompts
the model gets right; negative prompts: its corrupted ones — for IOI the ABC prompts where no
name repeats) and, when ``circuitkit.patching`` provides it, with EAP-IG (node level, |score|).
Prints precision and recall of the top-|circuit heads| heads and ROC-AUC over all heads.

Without any such zoo model it runs on a random tiny model (no reference: scores only).

    python benchmarks/sae_circuits.py [--seeds 3] [--steps 400]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from circuitkit import names  # noqa: E402
from circuitkit.sae import discrete_sae_head_scores  # noqa: E402


def roc_auc(scores: dict[str, float], positives: set[str]) -> float:
    """Mann-Whitney ROC-AUC (ties count one half)."""
    pos = [v for k, v in scores.items() if k in positives]
    neg = [v for k, v in scores.items() if k not in positives]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def top_k_precision_recall(scores: dict[str, float], positives: set[str]) -> tuple[float, float]:
    k = len(positives)
    top = sorted(scores, key=lambda label: (-scores[label], label))[:k]
    hits = len(set(top) & positives)
    return hits / k, hits / len(positives)


def find_eap_ig():
    for module in ("circuitkit.patching.eap_ig", "circuitkit.attribution.eap", "circuitkit.patching"):
        try:
            if importlib.util.find_spec(module) is None:
                continue
            fn = getattr(importlib.import_module(module), "eap_ig", None)
        except ImportError:
            continue
        if callable(fn):
            return fn
    return None


def head_scores(scores) -> dict[str, float]:
    return {label: float(v) for label, v in scores.as_dict().items()
            if names.parse_node(label).kind == "head" and names.parse_node(label).pos is None}


def evaluate(model, task, reference: set[str], seeds: int, steps: int, eap_ig) -> list[dict]:
    rows = []
    for normalize in (False, True):
        aucs, precs, recs, times = [], [], [], []
        for seed in range(seeds):
            start = time.perf_counter()
            scores = discrete_sae_head_scores(model, task, steps=steps, seed=seed, normalize=normalize)
            times.append(time.perf_counter() - start)
            heads = head_scores(scores)
            if reference:
                p, r = top_k_precision_recall(heads, reference)
                precs.append(p)
                recs.append(r)
                aucs.append(roc_auc(heads, reference))
        rows.append(dict(method=f"discrete-sae{' (normalised)' if normalize else ''}", seeds=seeds,
                         mean_score=float(scores.values.mean()),
                         precision=_mean(precs), recall=_mean(recs), roc_auc=_mean(aucs), seconds=_mean(times),
                         top=", ".join(label for label, _ in scores.top(5, by_abs=False))))
    if eap_ig is not None:
        start = time.perf_counter()
        scores = eap_ig(model, task, level="node", progress=False)
        seconds = time.perf_counter() - start
        heads = {k: abs(v) for k, v in head_scores(scores).items()}
        p, r = top_k_precision_recall(heads, reference) if reference else (float("nan"),) * 2
        rows.append(dict(method="eap-ig (node, |score|)", seeds=1, mean_score=float(sum(heads.values()) / len(heads)), precision=p, recall=r,
                         roc_auc=roc_auc(heads, reference) if reference else float("nan"), seconds=seconds,
                         top=", ".join(sorted(heads, key=lambda k: -heads[k])[:5])))
    return rows


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="SAE seeds to average over")
    parser.add_argument("--steps", type=int, default=400, help="code-SAE training steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import pandas as pd

    from circuitkit.zoo import list_zoo, load_zoo_model, zoo_task

    eap_ig = find_eap_ig()
    print(f"EAP-IG: {'circuitkit.patching eap_ig' if eap_ig else 'not available in this checkout'}")
    rows = []
    cards = [c for c in list_zoo() if any(names.is_valid_node(n) and names.parse_node(n).kind == "head"
                                          for n in c.circuit_nodes)]
    for card in cards:
        model = load_zoo_model(card.name)
        task = zoo_task(card, model)
        reference = {n for n in card.circuit_nodes if names.parse_node(n).kind == "head"}
        n_heads = model.cfg.n_layers * model.cfg.n_heads
        try:
            model_rows = evaluate(model, task, reference, args.seeds, args.steps, eap_ig)
        except ValueError as exc:  # e.g. a model that gets no prompt right has no positive prompts
            print(f"{card.name}: not scored: {exc}")
            continue
        for row in model_rows:
            # chance: the precision (= recall) of a random top-|circuit| pick.
            rows.append(dict(model=card.name, task=task.name, circuit_heads=f"{len(reference)}/{n_heads}",
                             chance=len(reference) / n_heads, **row))
    if not cards:
        print("no zoo model with a reference head circuit in data/zoo: running on a random tiny model "
              "(no reference, so precision / recall / ROC-AUC are undefined)")
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        from circuitkit.tasks.builders import default_words, ioi
        from circuitkit.tokenizers import word_level_tokenizer

        tok = word_level_tokenizer(default_words())
        cfg = HookedTransformerConfig(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=128, d_vocab=len(tok),
                                      n_ctx=64, act_fn="gelu", normalization_type="LN", seed=0)
        model = HookedTransformer(cfg, tokenizer=tok).eval()
        task = ioi(tok, n_prompts=32)
        for row in evaluate(model, task, set(), args.seeds, args.steps, None):
            rows.append(dict(model="random-tiny", task=task.name, circuit_heads="-", chance=float("nan"), **row))
    frame = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 40):
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
