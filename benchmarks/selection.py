"""Edge selection at small budgets: top-k against bootstrap sign-consistency (and the other
selections of `circuitkit.circuit.selection`) on the trained zoo models with a reference circuit.

For each model and scoring method, each selection picks ``n = int(k / 100 * n_edges)`` edges at
every k of MIB's grid (0.1 % ... 100 %); as `faithfulness_curve` does, edges on no
``input -> logits`` path are dropped and every other edge is mean-ablated. Columns:

* ``cmd``: MIB's CMD (area under |1 - f| over the whole grid, lower is better), as
  ``benchmarks/discovery.py`` reports it (`curve_areas`);
* ``cmd_small``: the same area over the budgets up to 10 % of the edges only (k <= 10);
* ``f@k``: faithfulness of the circuit at k % of the edges (k = 2, 5, 10);
* ``recall@10``: share of the reference circuit's edges among the 10 % circuit's;
* ``seconds``: scoring (all resamples for bootstrap) plus the selections over the grid.

Selections: ``top-k`` on the scores of all prompts (what ``discover`` does today, raw scores as in
``benchmarks/discovery.py``); ``bagged`` top-k on the bootstrap mean (the resampling without the
sign filter, to tell the two apart); ``bootstrap`` (sign agreement >= ``--agreement`` of
``--resamples`` resamples); ``bootstrap-ci`` (the paper's rule: the 95 % interval of the mean
excludes 0); ``ratio`` (``--ratio`` of the budget by signed score) and ``ilp``.

    PYTHONPATH=. python benchmarks/selection.py [--methods eap-ig eap] [--models NAME ...]
                                                [--resamples 10] [--agreement 0.9] [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import time

import torch

from circuitkit.circuit.discovery import score_edges
from circuitkit.circuit.evaluation import MIB_KS, EdgeEvaluator, curve_areas, mib_prune, mib_size
from circuitkit.circuit.selection import bootstrap_scores, mean_scores, selector
from circuitkit.zoo import list_zoo, load_zoo_model, reference_circuit, zoo_task

SMALL = tuple(k for k in MIB_KS if k <= 10)


def trained_cases(only=None):
    for card in list_zoo():
        if card.construction != "trained" or not card.circuit_edges or (only and card.name not in only):
            continue
        model = load_zoo_model(card.name)
        yield card.name, model, zoo_task(card, model), reference_circuit(card)


def curve(pick, evaluator: EdgeEvaluator) -> dict[float, tuple[float, list[str]]]:
    total = len(evaluator.model_edges)
    out = {}
    for k in MIB_KS:
        edges = mib_prune(pick(mib_size(k, total)))
        out[k] = (evaluator.faithfulness(edges), edges)
    return out


def run_case(name, model, task, reference, method, args) -> list[dict]:
    ev = EdgeEvaluator(model, task, "mean")
    method_args = {"steps": args.steps} if method == "eap-ig" else {}
    start = time.perf_counter()
    scores = score_edges(model, task, method, ablation="mean", method_args=method_args, source=ev.source)
    t_full = time.perf_counter() - start
    start = time.perf_counter()
    resamples = bootstrap_scores(task, lambda t: score_edges(model, t, method, ablation="mean",
                                                             method_args=method_args), args.resamples, args.seed)
    mean = mean_scores(resamples)
    t_boot = time.perf_counter() - start
    picks = {
        "top-k": (selector("top-k", scores, ev.model_edges), t_full),
        "bagged": (selector("top-k", mean, ev.model_edges), t_boot),
        "bootstrap": (selector("bootstrap", mean, ev.model_edges, resamples=resamples, agreement=args.agreement),
                      t_boot),
        "bootstrap-ci": (selector("bootstrap", mean, ev.model_edges, resamples=resamples, confidence=0.95), t_boot),
        "ratio": (selector("ratio", scores, ev.model_edges, ratio=args.ratio), t_full),
        "ilp": (selector("ilp", scores, ev.model_edges), t_full),
    }
    ref = set(reference.edges)
    rows = []
    for selection, (pick, seconds) in picks.items():
        if selection not in args.selections:
            continue
        start = time.perf_counter()
        points = curve(pick, ev)
        f = [points[k][0] for k in MIB_KS]
        _, cmd = curve_areas(MIB_KS, f)
        _, cmd_small = curve_areas(SMALL, f[:len(SMALL)])
        rows.append({"model": name, "method": method, "selection": selection, "edges": len(ev.model_edges),
                     "cmd": cmd, "cmd_small": cmd_small, "f@2": points[2][0], "f@5": points[5][0],
                     "f@10": points[10][0], "recall@10": len(ref & set(points[10][1])) / len(ref),
                     "seconds": seconds + time.perf_counter() - start})
    return rows


def main(argv=None) -> None:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["eap-ig", "eap"])
    parser.add_argument("--models", nargs="*", default=None, help="trained zoo models (default: all with a reference)")
    parser.add_argument("--selections", nargs="+", default=["top-k", "bagged", "bootstrap", "bootstrap-ci", "ratio", "ilp"])
    parser.add_argument("--steps", type=int, default=10, help="EAP-IG integration steps")
    parser.add_argument("--resamples", type=int, default=10, help="bootstrap resamples (the paper: 10)")
    parser.add_argument("--agreement", type=float, default=0.9, help="bootstrap: share of resamples agreeing in sign")
    parser.add_argument("--ratio", type=float, default=0.5, help="ratio: share of the budget by signed score")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for name, model, task, reference in trained_cases(args.models):
        for method in args.methods:
            rows += run_case(name, model, task, reference, method, args)
        print(f"done {name}", flush=True)
    table = pd.DataFrame(rows)
    print(f"mean ablation; {args.resamples} resamples, agreement {args.agreement}, ratio {args.ratio}, EAP-IG "
          f"{args.steps} steps; cmd: MIB's whole grid, cmd_small: k <= 10 % (lower is better)")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    wide = table.pivot_table(index=["model", "method"], columns="selection", values="cmd_small", sort=False)
    print("\ncmd_small by selection (lower is better):")
    print(wide.to_string(float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
