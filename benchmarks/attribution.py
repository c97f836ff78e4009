"""Issue 4 benchmark, parts (b) and (c): EAP / EAP-IG against exact edge patching.

(b) time of EAP-IG vs exact edge patching over every edge, and the Spearman rank correlation of
    their edge scores (target >= 0.9), on the same model and task;
(c) ROC-AUC of EAP, EAP-IG and exact patching scores (|score|) against each zoo model's reference
    circuit edges and nodes; ``edge_auc_route_capped`` ranks by
    ``circuitkit.circuit.cap_by_route`` scores (what ``discover`` ranks by).

``eap-ig+qk`` is EAP-IG with AtP*'s QK fix (``qk_fix=True``: edges into queries and keys scored
by the exact attention-pattern change times dM/d pattern); ``eap-ig-act`` interpolates each
layer's outputs in turn instead of the input embeddings (``interpolate="activations"``).
``eap-ig-mask`` is auto-circuit's estimator: every edge's mask interpolated at once (``interpolate="mask"``).

Every method scores edges by mean ablation (means over the task's clean prompts), the ablation the
trained models' reference edges were established with; reference edges a card measured as
invisible to mean ablation are left out of the edge AUC (``hidden``). Uses every zoo model found
(``circuitkit.zoo.list_zoo()``) whose prompts are at most ``--max-tokens`` long (exact patching of
every edge on 256-token prompts takes many minutes on a CPU; name such models with ``--models``);
without any, a tiny random model on an induction task (then (c) is skipped). Run:

    OMP_NUM_THREADS=1 python benchmarks/attribution.py [--steps 5] [--max-prompts 16] [--models NAME ...]

``--steps-sweep 1 3 5 10 20 50`` prints instead, per model, what the number of integration steps
does to each EAP-IG estimator (over inputs, activations, the edge mask): Spearman against exact
edge patching and the route-capped edge AUC against the reference circuit.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from circuitkit import names
from circuitkit.ablation import edges as g
from circuitkit.attribution import eap, eap_ig, exact_edge_patching
from circuitkit.circuit import cap_by_route, rank_auc, roc_auc

ABLATION = "mean"


def _roc_auc(scores, positives) -> float:
    """:func:`circuitkit.circuit.rank_auc`, NaN where every component (or none) is positive."""
    positives = [bool(p) for p in positives]
    if all(positives) or not any(positives):
        return float("nan")
    return rank_auc(torch.tensor([float(x) for x in scores]), torch.tensor(positives))


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(pd.Series(a.numpy()).corr(pd.Series(b.numpy()), method="spearman"))


EDGE_KINDS = ("q/k", "v", "mlp/logits")


def _edge_kind(label: str) -> str:
    """Which of :data:`EDGE_KINDS` an edge enters (the QK fix rescores the ``q/k`` ones)."""
    qkv = names.parse_edge(label).qkv
    return "q/k" if qkv in ("q", "k") else qkv or "mlp/logits"


def _models(max_prompts: int, only=None, max_tokens: int = 64, quiet: bool = False):
    from circuitkit.zoo import list_zoo, load_zoo_model, zoo_task

    cards = list_zoo()
    for card in cards:
        if only and card.name not in only:
            continue
        model = load_zoo_model(card.name)
        task = zoo_task(card, model)
        if not only and task.clean.shape[1] > max_tokens:
            if not quiet:
                print(f"{card.name}: skipped ({task.clean.shape[1]}-token prompts; pass --models {card.name})")
            continue
        yield card.name, model, task.subset(slice(0, max_prompts)), card
    if not cards:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        from circuitkit.tasks.builders import default_words, induction
        from circuitkit.tokenizers import word_level_tokenizer

        tok = word_level_tokenizer(default_words())
        cfg = HookedTransformerConfig(n_layers=2, d_model=64, d_head=16, n_heads=4, d_mlp=256, d_vocab=len(tok),
                                      n_ctx=64, act_fn="gelu", normalization_type="LN", seed=0,
                                      model_name="random-2l4h")
        model = HookedTransformer(cfg, tokenizer=tok).eval()
        yield "random-2l4h (no zoo)", model, induction(tok, n_prompts=max_prompts, seq_len=6), None


def _exact_nodes(model, task, index) -> dict[str, float]:
    """Exact node patching: ablate every edge leaving the node (= patch its output)."""
    source = g.ablation_source(model, task, ABLATION)
    outgoing: dict[str, list[str]] = {}
    for e in index.edges:
        outgoing.setdefault(names.parse_edge(e).parent, []).append(e)
    with torch.no_grad():
        base = float(task.score(model(task.clean)))
        return {n: float(task.score(g.run_with_edges(model, task.clean, None, source, ablate_edges=outgoing[n]))) - base
                for n in index.upstream}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--max-prompts", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="*", default=None, help="zoo models to run (default: all with short prompts)")
    parser.add_argument("--max-tokens", type=int, default=64, help="skip zoo models with longer prompts")
    parser.add_argument("--steps-sweep", type=int, nargs="*", default=None, metavar="STEPS",
                        help="only the steps sweep: these step counts for every EAP-IG estimator")
    parser.add_argument("--disagreements", type=int, default=2,
                        help="list this many edges per model where EAP-IG and exact patching rank furthest apart")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    assert abs(_roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) - 0.75) < 1e-12  # hand-checked example
    if args.steps_sweep:
        steps_sweep(args)
        return

    speed, quality, disagree, by_kind = [], [], [], []
    for name, model, task, card in _models(args.max_prompts, args.models, args.max_tokens):
        index = g.graph_index(model)
        t0 = time.perf_counter()
        e = eap(model, task, ablation=ABLATION, progress=False)
        t1 = time.perf_counter()
        ig = eap_ig(model, task, steps=args.steps, ablation=ABLATION, progress=False)
        t2 = time.perf_counter()
        exact = exact_edge_patching(model, task, ablation=ABLATION, progress=False)
        t3 = time.perf_counter()
        ig_qk = eap_ig(model, task, steps=args.steps, ablation=ABLATION, progress=False, qk_fix=True)
        t4 = time.perf_counter()
        ig_act = eap_ig(model, task, steps=args.steps, ablation=ABLATION, progress=False, interpolate="activations")
        t5 = time.perf_counter()
        ig_mask = eap_ig(model, task, steps=args.steps, ablation=ABLATION, progress=False, interpolate="mask")
        t6 = time.perf_counter()
        speed.append({"model": name, "prompts": len(task), "edges": len(index.edges),
                      "eap_s": t1 - t0, f"eap_ig{args.steps}_s": t2 - t1, f"eap_ig{args.steps}+qk_s": t4 - t3,
                      f"eap_ig{args.steps}_act_s": t5 - t4, f"eap_ig{args.steps}_mask_s": t6 - t5, "exact_s": t3 - t2,
                      "exact/eap_ig": (t3 - t2) / (t2 - t1),
                      "spearman(eap_ig,exact)": _spearman(ig.values, exact.values),
                      "spearman(eap_ig+qk,exact)": _spearman(ig_qk.values, exact.values),
                      "spearman(eap_ig_act,exact)": _spearman(ig_act.values, exact.values),
                      "spearman(eap_ig_mask,exact)": _spearman(ig_mask.values, exact.values),
                      "spearman(eap,exact)": _spearman(e.values, exact.values)})
        kinds = [_edge_kind(label) for label in exact.labels]
        by_kind.append({"model": name, **{
            f"{method} {kind}": _spearman(*(torch.stack([v for v, k in zip(x.values, kinds, strict=True) if k == kind])
                                           for x in (scores, exact)))
            for method, scores in (("eap_ig", ig), ("eap_ig+qk", ig_qk), ("eap_ig_act", ig_act), ("eap_ig_mask", ig_mask))
            for kind in EDGE_KINDS}})
        ranks = pd.DataFrame({"exact": exact.values.numpy(), "eap_ig": ig.values.numpy(),
                              "eap_ig_act": ig_act.values.numpy()}, index=exact.labels)
        gap = (ranks["exact"].rank() - ranks["eap_ig"].rank()).abs()
        for edge in gap.sort_values(ascending=False).index[:args.disagreements]:
            disagree.append({"model": name, "edge": edge, **ranks.loc[edge].to_dict(), "rank_gap": gap[edge]})
        if card is None or not card.circuit_edges:
            continue
        hidden = set(card.evidence.get("mean_ablation_invisible_edges", {}))
        gold_edges = set(card.circuit_edges)
        gold_nodes = set(card.circuit_nodes)
        node_labels = [n for n in index.upstream if n != names.INPUT]  # input is in every circuit
        node_scores = {
            "eap": eap(model, task, level="node", ablation=ABLATION, progress=False).as_dict(),
            "eap-ig": eap_ig(model, task, steps=args.steps, level="node", ablation=ABLATION, progress=False).as_dict(),
            "eap-ig-act": eap_ig(model, task, steps=args.steps, level="node", ablation=ABLATION, progress=False,
                                 interpolate="activations").as_dict(),
            "eap-ig-mask": eap_ig(model, task, steps=args.steps, level="node", ablation=ABLATION, progress=False,
                                  interpolate="mask").as_dict(),
            "exact": _exact_nodes(model, task, index),
        }
        node_scores["eap-ig+qk"] = node_scores["eap-ig"]  # the QK fix rescores edges, not nodes
        for method, scores in (("eap", e), ("eap-ig", ig), ("eap-ig+qk", ig_qk), ("eap-ig-act", ig_act),
                               ("eap-ig-mask", ig_mask), ("exact", exact)):
            quality.append({
                "model": name, "method": method, "hidden": len(hidden),
                "edge_auc": roc_auc(scores, gold_edges, level="edge", ignore=hidden),
                "edge_auc_route_capped": roc_auc(cap_by_route(scores), gold_edges, level="edge", ignore=hidden),
                "node_auc": _roc_auc([abs(node_scores[method][n]) for n in node_labels],
                                     [n in gold_nodes for n in node_labels]),
            })
    pd.set_option("display.width", 200)
    print(f"(b) EAP-IG ({args.steps} steps) vs exact edge patching, {ABLATION} ablation, {args.threads} thread(s)")
    print(pd.DataFrame(speed).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print("\n(b) the same Spearman correlations over the edges into queries / keys, values, and MLPs / logits")
    print(pd.DataFrame(by_kind).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if disagree:
        print(f"\n(b) the {args.disagreements} edges per model where EAP-IG and exact patching rank furthest apart")
        print(pd.DataFrame(disagree).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if quality:
        print("\n(c) ROC-AUC of |score| against the zoo's reference circuits")
        print(pd.DataFrame(quality).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    else:
        print("\n(c) skipped: no zoo models with reference circuits found")


INTERPOLATIONS = ("inputs", "activations", "mask")


def steps_sweep(args) -> None:
    """Spearman vs exact patching and route-capped edge AUC for each estimator x steps, per model."""
    rows = []
    for name, model, task, card in _models(args.max_prompts, args.models, args.max_tokens):
        exact = exact_edge_patching(model, task, ablation=ABLATION, progress=False)
        gold = set(card.circuit_edges) if card is not None else set()
        hidden = set(card.evidence.get("mean_ablation_invisible_edges", {})) if card is not None else set()
        for interpolate in INTERPOLATIONS:
            for steps in args.steps_sweep:
                t0 = time.perf_counter()
                try:
                    ig = eap_ig(model, task, steps=steps, ablation=ABLATION, progress=False, interpolate=interpolate)
                except ValueError as err:  # e.g. one step of a distance metric: its gradient is 0 at the clean run
                    print(f"{name} {interpolate} {steps} steps: not run ({str(err).split(';')[0]})")
                    continue
                rows.append({"model": name, "interpolate": interpolate, "steps": steps,
                             "spearman": _spearman(ig.values, exact.values),
                             "edge_auc": roc_auc(cap_by_route(ig), gold, level="edge", ignore=hidden) if gold else None,
                             "seconds": time.perf_counter() - t0})
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(f"EAP-IG steps sweep, {ABLATION} ablation, {args.max_prompts} prompts, {args.threads} thread(s): "
          "Spearman against exact edge patching")
    print(table.pivot_table(index=["model", "interpolate"], columns="steps", values="spearman")
          .to_string(float_format=lambda x: f"{x:.3f}"))
    print("\nroute-capped edge ROC-AUC against the reference circuit")
    print(table.pivot_table(index=["model", "interpolate"], columns="steps", values="edge_auc")
          .to_string(float_format=lambda x: f"{x:.3f}"))
    print("\nseconds per run")
    print(table.pivot_table(index=["model", "interpolate"], columns="steps", values="seconds")
          .to_string(float_format=lambda x: f"{x:.2f}"))


if __name__ == "__main__":
    main()
