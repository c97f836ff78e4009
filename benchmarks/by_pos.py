"""Position-resolved circuit discovery against the hand-built induction model's circuit, known at
each token by construction (``circuitkit.zoo.handbuilt.induction_circuit_by_pos``).

For EAP-IG, EAP and exact edge patching with ``by_pos=True`` (one score per edge and token
position, mean ablation): the edge ROC-AUC of the raw and of the route-capped scores against the
positioned reference (the card's mean-ablation-invisible edges left out at every position), the
edges of the smallest circuit reaching faithfulness 0.9 (``discover(..., by_pos=True)``), its
faithfulness on the position-resolved graph, and the seconds scoring took. Run:

    OMP_NUM_THREADS=1 python benchmarks/by_pos.py [--steps 10] [--methods eap-ig eap exact]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from circuitkit import attribution, names
from circuitkit.circuit import discover, roc_auc
from circuitkit.circuit.routes import cap_by_route
from circuitkit.zoo import load_zoo_model, zoo_card, zoo_task
from circuitkit.zoo.handbuilt import induction_circuit_by_pos

MODEL = "induction-handbuilt"


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="EAP-IG's integration steps")
    parser.add_argument("--methods", nargs="+", default=["eap-ig", "eap", "exact"], choices=["eap-ig", "eap", "exact"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_zoo_model(MODEL)
    task, card = zoo_task(MODEL, model), zoo_card(MODEL)
    reference = induction_circuit_by_pos(task)
    n_pos = task.clean.shape[1]
    hidden = [names.edge_at(e, p) for e in card.evidence.get("mean_ablation_invisible_edges", {}) for p in range(n_pos)]
    score = {"eap-ig": lambda: attribution.eap_ig(model, task, steps=args.steps, progress=False, by_pos=True),
             "eap": lambda: attribution.eap(model, task, progress=False, by_pos=True),
             "exact": lambda: attribution.exact_edge_patching(model, task, progress=False, by_pos=True, batch_size=512)}
    rows = []
    for method in args.methods:
        start = time.perf_counter()
        scores = score[method]()
        seconds = time.perf_counter() - start
        circuit = discover(model, task, method, by_pos=True, scores=scores)
        rows.append({"method": method, "edge_auc": roc_auc(scores, reference, ignore=hidden),
                     "edge_auc_route_capped": roc_auc(cap_by_route(scores), reference, ignore=hidden),
                     "n_edges": len(circuit.edges), "n_model_edges": len(scores),
                     "faithfulness": circuit.meta["faithfulness"],
                     "reference_kept": len(set(reference) - set(hidden) & set(circuit.edges)),
                     "seconds": seconds})
        print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format="%.3f"), flush=True)
    frame = pd.DataFrame(rows)
    print(f"\n{MODEL}, {len(task)} prompts x {n_pos} tokens, mean ablation, "
          f"{len(set(reference) - set(hidden))} mean-visible reference edges of {len(reference)}")
    print(frame.to_string(index=False, float_format="%.3f"))
    return frame


if __name__ == "__main__":
    main()
