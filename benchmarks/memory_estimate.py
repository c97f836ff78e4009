"""The attribution memory estimate against measured peaks: what one prompt adds to a run.

``budget_batch_size`` sizes EAP's and EAP-IG's prompt batches from ``memory_per_prompt`` under
``max_memory``: an estimate below the truth overruns the budget, one far above it splits the work
into more batches than needed. For random-weight models of several families (LayerNorm GELU,
parallel rotary, grouped-query gated RMSNorm, post-norm Gemma-2 style), each method runs at two
batch sizes in one process (warmed up first); the peak added resident memory (``/proc``
high-water mark reset before each run, glibc told to return freed blocks at once) grows by
``slope`` bytes per prompt, which the estimate should cover with little to spare. Prints
``estimate / measured`` per family and method (want: at least 1, not far above).

    MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0 OMP_NUM_THREADS=1 python benchmarks/memory_estimate.py
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale import induction_task, measure  # noqa: E402  (the scale benchmark's prompts and meter)

# family -> HookedTransformerConfig flags (the shapes of their real models, scaled down)
FAMILIES = {
    "gpt2": dict(act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard"),
    "pythia": dict(act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary", rotary_dim=16,
                   parallel_attn_mlp=True),
    "llama-3": dict(act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=32,
                    gated_mlp=True, n_key_value_heads=2),
    "gemma-2": dict(act_fn="gelu_pytorch_tanh", normalization_type="RMS", positional_embedding_type="rotary",
                    rotary_dim=32, gated_mlp=True, n_key_value_heads=4, use_normalization_before_and_after=True,
                    attn_scores_soft_cap=50.0, output_logits_soft_cap=30.0),
}


def build(family: str, n_layers: int, d_model: int, n_ctx: int):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=d_model, n_heads=d_model // 32, d_head=32,
                                  d_mlp=4 * d_model, d_vocab=2048, n_ctx=n_ctx, seed=0, device="cpu",
                                  model_name=f"random-{family}", **FAMILIES[family])
    model = HookedTransformer(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def run_method(model, task, method: str, batch_size: int, steps: int):
    """One attribution run of ``method`` over ``task`` in batches of ``batch_size`` (no budget)."""
    from circuitkit.attribution import attribution_patching, eap, eap_ig

    kw = dict(progress=False, batch_size=batch_size, max_memory=2 ** 40)
    if method == "nodes":
        return attribution_patching(model, task, **kw)
    if method == "eap_ig":
        return eap_ig(model, task, steps=steps, ablation="corrupted", **kw)
    return eap(model, task, ablation="corrupted", qk_fix=method == "qk_fix", **kw)


def slope(model, task, method: str, small: int, large: int, steps: int) -> float:
    """Bytes per prompt: the growth of the peak added memory from ``small`` to ``large`` prompts."""
    peaks = []
    for n in (small, large):
        sub = task.subset(slice(0, n))
        run_method(model, sub, method, n, steps)  # warm-up
        peaks.append(max(measure(lambda sub=sub, n=n: run_method(model, sub, method, n, steps))[1]
                         for _ in range(2)))
    return (peaks[1] - peaks[0]) / (large - small)


def main(argv=None) -> None:
    from circuitkit.ablation.edges import graph_index
    from circuitkit.attribution.common import memory_per_prompt

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--lengths", default="64,256")
    ap.add_argument("--batches", default="2,6", help="the two batch sizes whose peaks give the slope")
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    ap.add_argument("--methods", default="eap,eap_ig,qk_fix,nodes",
                    help="eap, eap_ig, qk_fix (EAP with the QK fix) and nodes (attribution_patching)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    small, large = (int(b) for b in args.batches.split(","))
    print(f"{args.layers} layers, d_model {args.d_model}, heads of 32, d_mlp 4 d_model, vocabulary 2048; "
          f"peaks at batch {small} and {large}; EAP-IG {args.steps} steps; corrupted ablation")
    print(f"  {'family':8s} {'tokens':>6s} {'method':7s} {'measured MiB/prompt':>20s} {'estimate':>9s} {'est/meas':>8s}")
    for family in args.families.split(","):
        for n_pos in (int(n) for n in args.lengths.split(",")):
            model = build(family, args.layers, args.d_model, n_pos + 1)
            task = induction_task(large, n_pos)
            index = graph_index(model)
            for method in args.methods.split(","):
                measured = slope(model, task, method, small, large, args.steps)
                estimate = memory_per_prompt(model, index, n_pos, method)
                print(f"  {family:8s} {n_pos:6d} {method:7s} {measured / 2**20:20.1f} {estimate / 2**20:9.1f} "
                      f"{estimate / measured:8.2f}", flush=True)


if __name__ == "__main__":
    main()
