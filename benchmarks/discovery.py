"""Circuit discovery quality: method x zoo model.

For every zoo model whose card records a reference circuit, run each discovery method
(``circuitkit.circuit.discovery``: score every edge, cap each score by its receiver's widest route
to the logits, prune to the smallest circuit reaching faithfulness 0.9; ACDC prunes itself) and
report, over every edge of the model:

* ``auc`` / ``auc_raw``: ROC-AUC against the reference (edges when the card lists edges, else
  nodes) of the route-capped scores discovery ranks by, and of the method's own scores. ACDC scores
  every edge too (its damage at its turn; untried edges 0, see ``acdc``), ranked signed; edge
  pruning by its gates' open probability averaged over its annealed path. ``auc_nodes`` ranks
  nodes by their edges' summed |score|.
* ``precision`` / ``recall`` of the pruned circuit's nodes, its ``faithfulness``;
* ``f_budget``: faithfulness of the top ``budget`` edges by raw score (default budget: the
  reference's edge count), the same size for every method;
* ``cpr`` / ``cmd``: MIB's areas under the faithfulness curve (``faithfulness_curve``, MIB's
  grid, dangling edges pruned), CPR higher and CMD lower is better;
* ``seconds`` for scoring + pruning.

Reference edges that a card measured as invisible to mean ablation
(``evidence["mean_ablation_invisible_edges"]``: no effect when mean-ablated, a large one when
zero-ablated, as they carry only what every prompt shares there, e.g. position) are left out of the
edge AUC under mean ablation (column ``hidden``); other ablations score every edge.

* with ``--stability N``: ``jaccard`` / ``spearman``, `circuit_stability`'s means over every pair
  of N runs, each on a seeded random half of the prompts (a method with a seed gets seed i on run
  i): Jaccard overlap of the top ``budget`` edges by |score| (ACDC: of its circuits) and
  Spearman rank correlation of all edge scores; ``stab_seconds`` for the N runs.
* with ``--seeds N``: a method with a seed (edge pruning, its warm-started variant, ACDC) runs at
  seeds 0..N-1, one row each (column ``seed``), and a last table gives each column's mean / min /
  max over them: edge pruning's ranking moves with its seed, so one draw can mislead a comparison.

With no zoo model present it falls back to a tiny random model whose circuit is known by
construction (two of four heads have W_O = 0) and says so.

``--gpt2-shape`` instead times every method's scoring (no pruning to faithfulness) on a
random-weight GPT-2-small-shaped model (benchmarks/scale.py's ``build_model`` / ``induction_task``:
vocabulary 2,048, induction prompts), ``--gpt2-prompts`` x ``--gpt2-tokens``: edge pruning and its
warm-started variant for ``--gpt2-pruning-steps`` steps (seconds per step reported beside), exact
patching on a timed subset of edges extrapolated to all, ACDC estimated (one masked forward timed,
times the edges it visits at most: every edge, one forward each, in sequence).

    python benchmarks/discovery.py [--methods eap-ig eap exact edge-pruning acdc] [--ablation mean]
                                   [--interpolate inputs] [--models NAME ...] [--max-prompts N]
                                   [--budget N] [--stability N] [--seeds N] [--set METHOD.PARAM=VALUE]
                                   [--out table.parquet]
    python benchmarks/discovery.py --gpt2-shape [--gpt2-prompts 8] [--gpt2-tokens 32] [--methods ...]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from circuitkit.circuit import Circuit, overlap, roc_auc
from circuitkit.circuit.discovery import DISCOVERY_METHODS, METHODS, discover, score_edges
from circuitkit.zoo import reference_circuit


def fallback_model():
    """A 2-layer, 2-head attention-only random model; heads a0.h1 and a1.h0 write nothing."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from circuitkit.tasks.builders import default_words, induction
    from circuitkit.tokenizers import word_level_tokenizer

    tok = word_level_tokenizer(default_words())
    cfg = HookedTransformerConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, d_vocab=len(tok), n_ctx=64,
                                  attn_only=True, act_fn="gelu", normalization_type="LN", seed=3, device="cpu",
                                  model_name="dead-heads (fallback)")
    model = HookedTransformer(cfg, tokenizer=tok).eval()
    with torch.no_grad():
        model.blocks[0].attn.W_O[1] = 0
        model.blocks[1].attn.W_O[0] = 0
    task = induction(tok, n_prompts=16, seq_len=6)
    return model, task, Circuit.from_nodes_edges(["a0.h0", "a1.h1"])


def zoo_cases(only=None, max_prompts=None):
    from circuitkit.zoo import list_zoo, load_zoo_model, zoo_task

    for card in list_zoo():
        if not (card.circuit_nodes or card.circuit_edges) or (only and card.name not in only):
            continue
        model = load_zoo_model(card.name)
        task = zoo_task(card, model)
        if max_prompts is not None and len(task) > max_prompts:
            task = task.subset(slice(0, max_prompts))
        yield card.name, model, task, reference_circuit(card), set(card.evidence.get("mean_ablation_invisible_edges", {}))


def _node_auc(scores, reference, by_abs: bool) -> float:
    """Node ROC-AUC, NaN where the reference holds every node (tracr-hist: both its components)."""
    nodes = {n for label in scores.labels for n in label.split("<")[0].split("->")} - {"input", "logits"}
    if not reference.nodes or nodes <= set(reference.nodes):
        return math.nan
    return roc_auc(scores, reference, level="node", by_abs=by_abs)




def run_case(name, model, task, reference, methods, ablation, steps, invisible=frozenset(),
             interpolate: str = "inputs", budget: int | None = None, stability: int | None = None,
             seeds: int = 1, overrides: dict | None = None) -> list[dict]:
    """One row per method; with ``seeds`` > 1, a method with a ``seed`` parameter gets one row per
    seed 0 .. ``seeds`` - 1 (column ``seed``). ``overrides``: method -> {parameter: value}."""
    from circuitkit.circuit.evaluation import EdgeEvaluator

    evaluator = EdgeEvaluator(model, task, ablation)
    n_budget = budget or (len(reference.edges) if reference.edges else max(1, len(evaluator.model_edges) // 10))
    hidden = set(invisible) if ablation == "mean" else set()
    rows = []
    for method in methods:
        args = {"steps": steps, "interpolate": interpolate} if method == "eap-ig" else {}  # the rest: defaults
        args.update((overrides or {}).get(method, {}))
        seeded = seeds > 1 and "seed" in DISCOVERY_METHODS[method].params
        for seed in range(seeds) if seeded else [None]:
            row = {"model": name, "method": method, **({} if seed is None else {"seed": seed})}
            rows.append({**row, **run_method(model, task, reference, method, ablation,
                                             {**args, **({} if seed is None else {"seed": seed})},
                                             evaluator, n_budget, hidden, stability, label=name)})
    return rows


def run_method(model, task, reference, method, ablation, args, evaluator, n_budget, hidden, stability,
               label="") -> dict:
    """One method's columns on one model (empty where the method refuses the task)."""
    from circuitkit.circuit.evaluation import faithfulness_curve, rank_edges
    from circuitkit.circuit.routes import cap_by_route

    ref_level = "edge" if reference.level == "edge" else "node"
    start = time.perf_counter()
    try:
        raw = None if method == "acdc" else score_edges(model, task, method, ablation=ablation, method_args=args)
    except ValueError as exc:  # e.g. EAP on an mse task: the metric's gradient is 0 at the clean run
        print(f"{label} {method}: not run ({str(exc).split(';')[0]})", flush=True)
        return {}
    circuit = discover(model, task, method, ablation=ablation, method_args=args, scores=raw,
                       threshold=0.01 if method == "acdc" else None)
    seconds = time.perf_counter() - start
    if method == "acdc":  # every edge scored: its damage at its turn, 0 for the untried (see acdc)
        raw = circuit.scores("edge")
    capped = cap_by_route(raw)
    # an estimate of m(ablated) - m(clean) is positive for needed edges when lower m is better (mse)
    own = DISCOVERY_METHODS[method].sign  # "mib": higher = more needed; the estimators' needed edges are negative
    sign = own if own == "mib" else ("mib" if task.metric_name in ("mse", "l2", "kl") else "circuitkit")
    # ACDC's damage is signed (removal can help); ranking it by |damage| would reward that
    by_abs = method != "acdc"
    curve = faithfulness_curve(model, task, raw, ablation=ablation, evaluator=evaluator, sign=sign)
    top = rank_edges(raw, evaluator.model_edges, by_abs, sign)[:n_budget]
    nodes = overlap(circuit, reference, "node") if reference.nodes else None
    row = {"auc": roc_auc(capped, reference, level=ref_level, ignore=hidden, by_abs=by_abs),
           "auc_raw": roc_auc(raw, reference, level=ref_level, ignore=hidden, by_abs=by_abs),
           "auc_level": ref_level, "hidden": len(hidden), "auc_nodes": _node_auc(capped, reference, by_abs),
           "precision": nodes.precision if nodes else math.nan, "recall": nodes.recall if nodes else math.nan,
           "edges": len(circuit.edges), "of": circuit.graph.number_of_edges(),
           "faithfulness": circuit.meta["faithfulness"], "budget": n_budget,
           "f_budget": evaluator.faithfulness(top), "cpr": curve.attrs["cpr"], "cmd": curve.attrs["cmd"],
           "seconds": seconds}
    if stability:
        row.update(stability_columns(model, task, method, stability, ablation, args, n_budget))
    return row


def stability_columns(model, task, method, n_runs, ablation, method_args, k) -> dict:
    """`circuit_stability`'s mean Jaccard (top ``k`` edges) / Spearman over ``n_runs`` resamples,
    and its seconds."""
    from circuitkit.circuit.stability import circuit_stability

    start = time.perf_counter()
    table = circuit_stability(model, task, method, n_runs=n_runs, ablation=ablation, method_args=method_args,
                              k=k, threshold=0.01 if method == "acdc" else None)
    return {"jaccard": table.attrs["jaccard_mean"], "spearman": table.attrs["spearman_mean"],
            "stab_seconds": time.perf_counter() - start}


def gpt2_shape_timings(methods, n_prompts: int, n_tokens: int, ablation: str, steps: int, pruning_steps: int,
                       exact_edges: int) -> list[dict]:
    """Seconds each method takes to score every edge of a random GPT-2-small-shaped model."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scale import build_model, induction_task  # the shapes and prompts of the scale benchmark

    from circuitkit.ablation.edges import ablation_source, graph_index, run_with_mask
    from circuitkit.attribution import exact_edge_patching

    model = build_model("gpt2", n_tokens + 1)
    task = induction_task(n_prompts, n_tokens)
    n_edges = len(graph_index(model).edges)
    print(f"gpt2-shape (random weights, vocabulary 2048): {n_edges} edges; {n_prompts} prompts x {n_tokens} tokens; "
          f"{ablation} ablation; torch threads {torch.get_num_threads()}", flush=True)
    rows = []
    for method in methods:
        row = {"method": method, "edges_scored": n_edges}
        start = time.perf_counter()
        if method == "acdc":  # one masked forward per edge it visits, in sequence: time one, multiply
            index = graph_index(model)
            source = ablation_source(model, task, kind=ablation)
            mask = torch.zeros(index.shape)
            mask.view(-1)[index.flat_edge_index()[-1]] = 1.0  # one edge ablated, as at each of ACDC's turns
            with torch.no_grad():
                run_with_mask(model, task.clean, mask, source)
                start = time.perf_counter()
                run_with_mask(model, task.clean, mask, source)
            one = time.perf_counter() - start
            row.update(edges_scored=0, seconds=math.nan, estimate=one * n_edges,
                       note=f"not run; estimate (a floor): {n_edges} edges x one masked forward ({one:.3f} s)")
        elif method == "exact":
            subset = graph_index(model).edges[:exact_edges]
            exact_edge_patching(model, task, ablation=ablation, edges=subset, progress=False)
            seconds = time.perf_counter() - start
            row.update(edges_scored=len(subset), seconds=seconds, estimate=seconds * n_edges / len(subset),
                       note=f"{len(subset)} edges timed, extrapolated to all")
        else:
            args = {"steps": steps} if method in ("eap-ig", "ensemble-mean") else {}
            if method == "edge-pruning":
                args = {"steps": pruning_steps}
            elif method == "eap-ig-pruning":  # its EAP-IG as the eap-ig row's
                args = {"steps": pruning_steps, "ig_steps": steps}
            score_edges(model, task, method, ablation=ablation, method_args=args)
            row["seconds"] = time.perf_counter() - start
            if method in ("edge-pruning", "eap-ig-pruning"):
                default = DISCOVERY_METHODS[method].params["steps"]
                ig = next((r["seconds"] for r in rows if r["method"] == "eap-ig"), None)  # same IG steps
                prior = ig if method == "eap-ig-pruning" and ig is not None else 0.0
                row["per_step"] = (row["seconds"] - prior) / pruning_steps  # set-up included: generous
                row["estimate"] = prior + row["per_step"] * default
                row["note"] = (f"{pruning_steps} steps run; estimate at its default {default}"
                               + (" (+ the eap-ig row's seconds)" if prior else ""))
        rows.append(row)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return rows


def main(argv=None) -> None:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--ablation", default="mean", choices=("mean", "resample", "corrupted", "zero"))
    parser.add_argument("--steps", type=int, default=10, help="EAP-IG integration steps")
    parser.add_argument("--interpolate", default="inputs", choices=("inputs", "activations"),
                        help="EAP-IG's path: the input embeddings, or each layer's outputs in turn")
    parser.add_argument("--models", nargs="*", default=None, help="zoo models to run (default: all with a circuit)")
    parser.add_argument("--max-prompts", type=int, default=None, help="use at most this many prompts per task")
    parser.add_argument("--budget", type=int, default=None,
                        help="edges kept for f_budget (default: the reference's edge count, else a tenth of the graph)")
    parser.add_argument("--stability", type=int, default=None, metavar="N",
                        help="also run circuit_stability over N prompt resamples per method and model (columns "
                             "jaccard, spearman, stab_seconds)")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="run each method with a seed (edge pruning, eap-ig-pruning, acdc) at seeds 0..N-1, one "
                             "row each, and print their mean / min / max per model")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                        help="a method's parameter other than its default, e.g. eap-ig-pruning.steps=150 (repeatable)")
    parser.add_argument("--gpt2-shape", action="store_true",
                        help="instead: time each method's scoring on a random GPT-2-small-shaped model")
    parser.add_argument("--gpt2-prompts", type=int, default=8)
    parser.add_argument("--gpt2-tokens", type=int, default=32)
    parser.add_argument("--gpt2-pruning-steps", type=int, default=2,
                        help="edge pruning steps run at GPT-2 shape (seconds per step reported)")
    parser.add_argument("--gpt2-exact-edges", type=int, default=64, help="edges exact patching times there")
    parser.add_argument("--out", default=None, help="also write the table as Parquet")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.gpt2_shape:
        table = pd.DataFrame(gpt2_shape_timings(args.methods, args.gpt2_prompts, args.gpt2_tokens, args.ablation,
                                                args.steps, args.gpt2_pruning_steps, args.gpt2_exact_edges))
        print(f"seconds: measured; estimate: every edge / the method's default steps (see --help); "
              f"EAP-IG {args.steps} steps over the inputs")
        print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
        if args.out:
            table.to_parquet(args.out)
        return

    rows = []
    for name, model, task, reference, invisible in zoo_cases(args.models, args.max_prompts):
        case = run_case(name, model, task, reference, args.methods, args.ablation, args.steps, invisible,
                        args.interpolate, args.budget, args.stability, args.seeds, overrides)
        rows += case
        print(pd.DataFrame(case).to_string(index=False), flush=True)
    if not rows:
        print("no zoo model with a reference circuit found: using the tiny random fallback model")
        model, task, reference = fallback_model()
        rows = run_case("dead-heads (fallback)", model, task, reference, args.methods, args.ablation, args.steps,
                        budget=args.budget, stability=args.stability, seeds=args.seeds, overrides=overrides)
    table = pd.DataFrame(rows)
    if "seed" in table:
        table.insert(2, "seed", table.pop("seed").astype("Int64"))
    print(f"ablation={args.ablation}, pruning: smallest circuit with faithfulness >= 0.9 (ACDC: tau=0.01, KL); "
          "auc: route-capped scores, auc_raw: the method's own; f_budget: top-`budget` raw edges; cpr / cmd: MIB's"
          + (f"; EAP-IG interpolates {args.interpolate}" if args.interpolate != "inputs" else "")
          + (f"; set: {', '.join(args.set)}" if args.set else "")
          + (f"; jaccard / spearman: means over pairs of {args.stability} runs on seeded halves of the prompts "
             "(top-`budget` edges by |score|; ACDC: its circuits)" if args.stability else ""))
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if args.seeds > 1 and "seed" in table:
        print(f"over seeds 0..{args.seeds - 1} (methods without a seed: their one run):")
        print(seed_summary(table).to_string(float_format=lambda x: f"{x:.3f}"))
    if args.out:
        table.to_parquet(args.out)


def parse_overrides(items: list[str]) -> dict:
    """``["eap-ig-pruning.steps=150"]`` -> ``{"eap-ig-pruning": {"steps": 150}}`` (numbers parsed)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, param = key.partition(".")
        if not sep or not dot or method not in DISCOVERY_METHODS:
            raise SystemExit(f"--set {item!r}: want METHOD.PARAM=VALUE with METHOD one of {list(DISCOVERY_METHODS)}")
        if param not in DISCOVERY_METHODS[method].params:
            raise SystemExit(f"--set {item!r}: {method} has no parameter {param!r}; it takes "
                             f"{', '.join(DISCOVERY_METHODS[method].params)}")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out.setdefault(method, {})[param] = value
    return out


def seed_summary(table):
    """Per model and method: mean / min / max of auc, cmd and faithfulness over the seed rows."""
    return (table.groupby(["model", "method"], sort=False)[["auc", "cmd", "faithfulness", "seconds"]]
            .agg(["mean", "min", "max"]).drop(columns=[("seconds", "min"), ("seconds", "max")]))


if __name__ == "__main__":
    main()
