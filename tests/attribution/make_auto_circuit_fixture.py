"""Write ``data/auto_circuit_scores.json``: auto-circuit's own edge scores on two zoo models, the
oracle of ``test_auto_circuit.py``.

Run: ``pip install --no-deps auto-circuit==1.0.1 ordered-set`` then
``python tests/attribution/make_auto_circuit_fixture.py``. auto-circuit 1.0.1 imports
``transformer_lens.past_key_value_caching.HookedTransformerKeyValueCache``, which TransformerLens 3
renamed ``TransformerLensKeyValueCache``; the shim below aliases it and changes nothing else.

auto-circuit reads the logits at the last position only, so each task keeps the prompts whose
answer is at their last token (cut there). Scores: ``mask_gradient_prune_scores`` (logit
difference, summed mask gradients of its loss ``-logit_diff``) with ``mask_val=0`` (EAP) and with
``integrated_grad_samples``, under its corrupted-prompt (``RESAMPLE`` on the corrupt inputs) and
``TOKENWISE_MEAN_CORRUPT`` ablations.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch
import transformer_lens

import circuitkit as ck
from circuitkit import names

shim = types.ModuleType("transformer_lens.past_key_value_caching")
shim.HookedTransformerKeyValueCache = transformer_lens.TransformerLensKeyValueCache
sys.modules[shim.__name__] = shim
transformer_lens.HookedTransformerKeyValueCache = transformer_lens.TransformerLensKeyValueCache

from auto_circuit.data import PromptDataLoader, PromptDataset  # noqa: E402
from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores  # noqa: E402
from auto_circuit.types import AblationType  # noqa: E402
from auto_circuit.utils.graph_utils import patchable_model  # noqa: E402

MODELS = ("induction-trained", "ioi-trained")
N_PROMPTS = 16
SAMPLES = 4  # integrated_grad_samples: 5 mask values 0, 1/4, .., 1
OUT = Path(__file__).parent / "data" / "auto_circuit_scores.json"


def last_token_task(name: str, model):
    """The zoo task's first prompts whose answer is at their last token (auto-circuit reads the
    last position only), cut after it."""
    task = ck.zoo_task(name, model)
    pos = task.answer_pos.reshape(len(task), -1)[:, 0]
    end = int(pos.max())
    rows = torch.nonzero(pos == end).flatten()[:N_PROMPTS]
    return rows, end + 1


def circuitkit_edge(name: str) -> str:
    """auto-circuit's ``src->dest`` edge name as circuitkit's."""
    src, dest = name.split("->")

    def node(text: str) -> tuple[str, str | None]:
        if text == "Resid Start":
            return names.INPUT, None
        if text == "Resid End":
            return names.LOGITS, None
        if text.startswith("MLP "):
            return names.mlp(int(text[4:])), None
        layer, head, *qkv = text[1:].split(".")
        return names.head(int(layer), int(head)), (qkv[0].lower() if qkv else None)

    parent, _ = node(src)
    child, qkv = node(dest)
    return names.edge(parent, child, qkv)


def patchable_task(name: str, by_pos: bool = False):
    """auto-circuit's patchable model of zoo model ``name`` and its loader over :func:`last_token_task`'s
    prompts, ``(patchable, loader, rows, length)``; ``by_pos``: a separate mask per token position."""
    model = ck.load_model(f"zoo:{name}")
    rows, length = last_token_task(name, model)
    task = ck.zoo_task(name, model)
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    if not model.cfg.attn_only:
        model.set_use_hook_mlp_in(True)
    clean, corrupt = task.clean[rows, :length], task.corrupted[rows, :length]
    answers = [a[a >= 0] for a in task.answers[rows].reshape(len(rows), -1)]
    wrong = [w[w >= 0] for w in task.wrong_answers[rows].reshape(len(rows), -1)]
    seq_len = length if by_pos else None
    loader = PromptDataLoader(PromptDataset(clean, corrupt, answers, wrong), seq_len=seq_len, diverge_idx=0,
                              batch_size=len(rows), shuffle=False)
    patchable = patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True, seq_len=seq_len,
                                device=torch.device("cpu"))
    return patchable, loader, rows, length


def scores_for(name: str) -> dict:
    patchable, loader, rows, length = patchable_task(name)
    runs = {
        "eap-corrupted": dict(mask_val=0.0, ablation_type=AblationType.RESAMPLE, clean_corrupt="corrupt"),
        "mask-ig-corrupted": dict(integrated_grad_samples=SAMPLES, ablation_type=AblationType.RESAMPLE, clean_corrupt="corrupt"),
        "mask-ig-mean-corrupted": dict(integrated_grad_samples=SAMPLES, ablation_type=AblationType.TOKENWISE_MEAN_CORRUPT,
                                       clean_corrupt=None),
    }
    out = {"rows": rows.tolist(), "length": length, "integrated_grad_samples": SAMPLES, "scores": {}}
    for key, options in runs.items():
        prune = mask_gradient_prune_scores(patchable, loader, None, grad_function="logit", answer_function="avg_diff",
                                           **options)
        out["scores"][key] = {circuitkit_edge(e.name): float(e.prune_score(prune)) for e in patchable.edges}
    return out


if __name__ == "__main__":
    result = {"auto_circuit": "1.0.1", "models": {name: scores_for(name) for name in MODELS}}
    OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")
