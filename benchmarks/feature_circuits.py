"""Feature-circuit discovery scored against features known by construction.

On ``induction-handbuilt`` with its shipped analytic SAEs (resid_pre.0, resid_pre.1,
resid_post.1; ``circuitkit.zoo.feature_saes``), for first-order attribution and integrated
gradients side by side:

* node / edge ROC-AUC of |estimate| against the true feature circuit of the prompts (the card's
  rule; input nodes left out of the node AUC; edges over the union of the methods' estimated
  edges and the true ones, an edge a method did not estimate counting as 0);
* faithfulness and completeness (features outside the circuit at their mean, errors ablated
  unless in the circuit) of the known circuit and of the discovered one (the top-k feature /
  error nodes, k = the known circuit's feature count), and the error nodes' share of the
  discovered circuit's |score|;
* Spearman of estimates against exact patching on a sample of nodes and of edges
  (``check_estimates``: the largest half plus a random rest);
* the wall time of each graph.

``--tiny-lm``: also ``tiny-lm``'s induction task with its shipped top-k SAEs (resid_pre.0,
resid_pre.1, resid_post.1; trained with ``circuitkit sae train zoo:tiny-lm --hook HOOK --arch topk
--d-sae 512 --k 16 --steps 1500``), nodes summed over positions: faithfulness, completeness and
the error nodes' share of the top-k feature / error nodes for several k (no ground truth there).

Run:

    OMP_NUM_THREADS=1 python benchmarks/feature_circuits.py [--prompts 32] [--steps 8] [--sample 30] [--tiny-lm]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from circuitkit.circuit.compare import rank_auc
from circuitkit.circuit.features import (
    check_estimates,
    evaluate_feature_circuit,
    graph_circuit,
    top_features,
)
from circuitkit.models import load_model
from circuitkit.models.zoo_store import zoo_task
from circuitkit.sae.graph import feature_graph
from circuitkit.sae.linear import linear_feature_graph
from circuitkit.zoo.feature_saes import SITES, build_induction_saes, induction_feature_circuit

TINY_LM_KS = (50, 100, 200, 300, 400)


def aucs(graph, nodes, edges, pool_edges) -> tuple[float, float]:
    true_nodes, true_edges = set(nodes), set(edges)
    labels = [n for n in graph.nodes.labels if not n.startswith("input")]
    scores = graph.nodes.as_dict()
    node_auc = rank_auc(torch.tensor([abs(scores[n]) for n in labels]), torch.tensor([n in true_nodes for n in labels]))
    est = dict(zip(graph.edges.labels, graph.edges.values.abs().tolist(), strict=True))
    pool = sorted(set(pool_edges) | true_edges)
    edge_auc = rank_auc(torch.tensor([est.get(e, 0.0) for e in pool]), torch.tensor([e in true_edges for e in pool]))
    return node_auc, edge_auc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--sample", type=int, default=30, help="nodes and edges checked against exact patching")
    ap.add_argument("--node-threshold", type=float, default=1e-3)
    ap.add_argument("--tiny-lm", action="store_true", help="also tiny-lm's induction task with its shipped SAEs")
    ap.add_argument("--tiny-lm-prompts", type=int, default=16)
    ap.add_argument("--tiny-lm-max-nodes", type=int, default=300, help="candidate features per site on tiny-lm")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model("zoo:induction-handbuilt", device="cpu")
    task = zoo_task("induction-handbuilt", model).subset(range(args.prompts))
    saes = build_induction_saes()
    nodes, edges = induction_feature_circuit(task, model.cfg.d_vocab)
    known = evaluate_feature_circuit(model, saes, task, nodes)
    n_true = sum(1 for n in nodes if n.startswith("f"))
    graphs, times = {}, {}
    for method in ("attribution", "ig", "linear"):
        t0 = time.perf_counter()
        if method == "linear":  # attention-only: the exact linear graph applies (zero baseline)
            graphs[method] = linear_feature_graph(model, saes, task, node_threshold=args.node_threshold, progress=False)
        else:
            graphs[method] = feature_graph(model, saes, task, method=method, steps=args.steps,
                                           node_threshold=args.node_threshold, progress=False)
        times[method] = time.perf_counter() - t0
    pool = set().union(*(g.edges.labels for g in graphs.values()))  # the same edge pool for every method
    rows = []
    for method, graph in graphs.items():
        seconds = times[method]
        node_auc, edge_auc = aucs(graph, nodes, edges, pool)
        found = top_features(graph_circuit(graph, model), n_true)
        ev = evaluate_feature_circuit(model, saes, task, found)
        chk = check_estimates(model, saes, task, graph, args.sample, args.sample)
        rows.append({"method": method, "node_auc": node_auc, "edge_auc": edge_auc,
                     "faithfulness": ev.faithfulness, "completeness": ev.completeness,
                     "error_share": ev.error_share, "spearman_nodes": chk.node_spearman,
                     "spearman_edges": chk.edge_spearman, "n_candidates": len(graph.candidates),
                     "n_edges": len(graph.edges), "seconds": seconds})
    print(f"induction-handbuilt, {args.prompts} prompts, {len(nodes)} true nodes ({n_true} features), "
          f"{len(edges)} true edges; known circuit: faithfulness {known.faithfulness:.3f}, "
          f"completeness {known.completeness:.3f}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(pd.DataFrame(rows).round(3).to_string(index=False))
    if args.tiny_lm:
        tiny_lm(args)


def tiny_lm(args) -> None:
    from circuitkit.models.zoo_store import zoo_card
    from circuitkit.sae import load_sae

    card = zoo_card("tiny-lm")
    model = load_model("zoo:tiny-lm", device="cpu")
    task = zoo_task("tiny-lm", model).subset(range(args.tiny_lm_prompts))
    folder = card.path / "saes"
    if not folder.is_dir():  # a checkout whose installed circuitkit.data is another checkout's
        folder = Path(__file__).resolve().parents[1] / "data" / "zoo" / "tiny-lm" / "saes"
    saes = [load_sae(folder / hook) for hook in SITES]
    t0 = time.perf_counter()
    graph = feature_graph(model, saes, task, method="ig", steps=4, positions="sum", node_threshold=args.node_threshold,
                          max_nodes=args.tiny_lm_max_nodes, progress=False)
    seconds = time.perf_counter() - t0
    circuit = graph_circuit(graph, model)
    rows = []
    n_all = sum(1 for n in circuit.nodes if n[0] in "fe")
    for k in (*TINY_LM_KS, n_all):
        for errors in ("circuit", "keep"):
            ev = evaluate_feature_circuit(model, saes, task, top_features(circuit, k), errors=errors)
            rows.append({"k": k, "errors": errors, "features": ev.n_features, "error_nodes": ev.n_errors,
                         "faithfulness": ev.faithfulness, "completeness": ev.completeness,
                         "error_share": ev.error_share})
    print(f"tiny-lm induction, {args.tiny_lm_prompts} prompts, IG (4 steps), positions summed, "
          f"{len(graph.candidates)} candidates of {sum(s.d_sae for s in graph.sites)} features + 3 error nodes, "
          f"{len(graph.edges)} edges, {seconds:.1f} s")
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
