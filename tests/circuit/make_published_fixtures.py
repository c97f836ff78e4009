"""Write ``data/auto_circuit_true_edges.json``: the edge sets auto-circuit ships as the published
circuits' ground truth (``ioi_true_edges``, ``greaterthan_true_edges``, ``docstring_true_edges``,
all three from ACDC's definitions), the oracle of ``test_circuit_published.py``.

Run: ``pip install --no-deps auto-circuit==1.0.1 ordered-set`` then
``python tests/circuit/make_published_fixtures.py``. The edge sets depend only on the models'
layout, so the models are random ones of the right shape (GPT-2 small: 12 layers x 12 heads with
MLPs; attn-only-4l: 4 layers x 8 heads, no MLPs) at a tiny width, named as auto-circuit's
functions require. Positions are not resolved (``token_positions=False``): circuitkit's graph has
none. The shim for TransformerLens 3's renamed KV-cache class is the one of
``tests/attribution/make_auto_circuit_fixture.py``.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch
import transformer_lens
from transformer_lens import HookedTransformer, HookedTransformerConfig

shim = types.ModuleType("transformer_lens.past_key_value_caching")
shim.HookedTransformerKeyValueCache = transformer_lens.TransformerLensKeyValueCache
sys.modules[shim.__name__] = shim
transformer_lens.HookedTransformerKeyValueCache = transformer_lens.TransformerLensKeyValueCache

from auto_circuit.metrics.official_circuits.circuits import (  # noqa: E402
    docstring_official,
    greaterthan_official,
    ioi_official,
)
from auto_circuit.utils.graph_utils import patchable_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "attribution"))
from make_auto_circuit_fixture import circuitkit_edge  # noqa: E402

OUT = Path(__file__).parent / "data" / "auto_circuit_true_edges.json"


def shaped(n_layers: int, n_heads: int, attn_only: bool, model_name: str):
    cfg = HookedTransformerConfig(n_layers=n_layers, n_heads=n_heads, d_model=2 * n_heads, d_head=2, d_mlp=8,
                                  d_vocab=8, n_ctx=8, act_fn="gelu_new", normalization_type="LN", attn_only=attn_only,
                                  model_name=model_name, device="cpu", seed=0)
    model = HookedTransformer(cfg)
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    if not attn_only:
        model.set_use_hook_mlp_in(True)
    return patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True,
                           device=torch.device("cpu"))


if __name__ == "__main__":
    gpt2 = shaped(12, 12, False, "gpt2")
    attn4 = shaped(4, 8, True, "Attn_Only_4L512W_C4_Code")
    sets = {"gpt2-ioi": ioi_official.ioi_true_edges(gpt2),
            "gpt2-greater-than": greaterthan_official.greaterthan_true_edges(gpt2),
            "attn-only-4l-docstring": docstring_official.docstring_true_edges(attn4)}
    result = {"auto_circuit": "1.0.1", "circuits": {k: sorted(circuitkit_edge(e.name) for e in v) for k, v in sets.items()},
              "n_edges": {"gpt2": len(gpt2.edges), "attn-only-4l": len(attn4.edges)}}
    OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}: " + ", ".join(f"{k} {len(v)}" for k, v in result["circuits"].items()))
