"""Write ``data/auto_circuit_by_pos_scores.json``: auto-circuit's own position-resolved edge scores
(``patchable_model(..., seq_len=...)``: a separate mask per token position for every edge), the
oracle of ``test_by_pos.py``'s auto-circuit test.

Run (after ``pip install --no-deps auto-circuit==1.0.1 ordered-set``):
``python tests/attribution/make_auto_circuit_by_pos_fixture.py``. The prompts, the shim for
TransformerLens 3 and the edge names are those of ``make_auto_circuit_fixture.py``; an edge at
position ``p`` (auto-circuit's ``seq_idx``) is circuitkit's ``names.edge_at(edge, p)``.
"""

from __future__ import annotations

import json
from pathlib import Path

from make_auto_circuit_fixture import N_PROMPTS, SAMPLES, circuitkit_edge, patchable_task

from circuitkit import names

MODEL = "induction-trained"
OUT = Path(__file__).parent / "data" / "auto_circuit_by_pos_scores.json"


def scores_for(name: str) -> dict:
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.types import AblationType

    patchable, loader, rows, length = patchable_task(name, by_pos=True)
    runs = {
        "eap-corrupted": dict(mask_val=0.0, ablation_type=AblationType.RESAMPLE, clean_corrupt="corrupt"),
        "mask-ig-corrupted": dict(integrated_grad_samples=SAMPLES, ablation_type=AblationType.RESAMPLE,
                                  clean_corrupt="corrupt"),
    }
    out = {"rows": rows.tolist(), "length": length, "integrated_grad_samples": SAMPLES, "n_prompts": N_PROMPTS,
           "scores": {}}
    for key, options in runs.items():
        prune = mask_gradient_prune_scores(patchable, loader, None, grad_function="logit", answer_function="avg_diff",
                                           **options)
        out["scores"][key] = {names.edge_at(circuitkit_edge(e.name), e.seq_idx): round(float(e.prune_score(prune)), 7)
                              for e in patchable.edges}
    return out


if __name__ == "__main__":
    result = {"auto_circuit": "1.0.1", "models": {MODEL: scores_for(MODEL)}}
    OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")
