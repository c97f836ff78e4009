"""Issue 34 benchmark: the needle grid at 4,096 tokens beside a bare forward pass over the same prompts.

A random-weight GPT-2-small-shaped model (12 layers x 12 heads, d_model 768, d_mlp 3072, vocabulary
2,048; `scale.build_model`) with a word-level tokenizer attached; the haystack is random token ids
(a token-id corpus: the needles sit at their exact depths). ``needle_grid`` runs one cell
(``--length`` tokens, depth 0.5, two values: 2 prompts in one batch) under a RazorAttention policy
(the heads of ``--full-layers`` keep the full cache, every other head sink 4 + window 64; the mask
applied to every layer's ``hook_attn_scores``), and the bare forward is ``model(tokens)`` over the
same 2 prompts in one batch (what the grid cannot do with less: every layer's attention at every
position). Each callable is run once at 512 tokens to warm up, then ``--repeats`` alternating
rounds at ``--length`` in one worker process; the best time is kept. Peak memory: the
resident-set high-water mark added during the call (`scale.measure`) in a second worker (one
round after the warm-up), glibc told to hand freed blocks back at once (`scale.worker_env`; the
timing worker runs under the default allocator, which that setting would slow).

Run (about 5 minutes on 1 shared core)::

    OMP_NUM_THREADS=1 python benchmarks/needle_grid.py
    OMP_NUM_THREADS=2 python benchmarks/needle_grid.py --length 2048 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GiB = 2 ** 30


def worker(spec: dict) -> dict:
    import torch

    sys.path.insert(0, HERE)
    from scale import build_model, measure

    from circuitkit import names
    from circuitkit.heads.kv import KVPolicy, needle_grid
    from circuitkit.tasks.builders import default_words, needle
    from circuitkit.tokenizers import word_level_tokenizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    n_pos = spec["length"]
    model = build_model("gpt2", n_pos + 8)
    model.tokenizer = word_level_tokenizer(default_words())
    gen = torch.Generator().manual_seed(0)
    first_word = 8  # past the special tokens
    haystack = torch.randint(first_word, len(model.tokenizer), (2 * n_pos,), generator=gen).tolist()
    full = [names.head(layer, h) for layer in spec["full_layers"] for h in range(model.cfg.n_heads)]
    policy = KVPolicy.razor(model, full, sink=4, window=64)
    kwargs = dict(values=("7", "42"), haystack=haystack)

    def grid(n):
        return needle_grid(model, policy, (n,), (0.5,), batch_size=2, max_memory=8 * GiB, **kwargs)

    def bare(n):
        task = needle(model, context_lengths=(n,), depths=(0.5,), **kwargs)
        tokens = task.clean  # the same 2 prompts the grid builds (building them is timed in the grid)
        with torch.no_grad():
            return model(tokens)

    calls = {"bare forward (2 prompts, 1 batch)": bare, "needle_grid (razor policy)": grid}
    for fn in calls.values():  # warm-up
        fn(512)
    best = {name: float("inf") for name in calls}
    peak = {name: 0 for name in calls}
    table = None
    for _ in range(spec["repeats"]):
        for name, fn in calls.items():
            seconds, added, out = measure(lambda fn=fn: fn(n_pos))
            best[name] = min(best[name], seconds)
            peak[name] = max(peak[name], added)
            table = out if fn is grid else table
    return {"seconds": best, "peak": peak, "kv_kept": float(table.kv_kept.iloc[0]),
            "n_prompts": int(table.n_prompts.iloc[0]), "n_full_heads": len(full)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", type=int, default=4096, help="context length in tokens")
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds after the warm-up; the best is kept")
    ap.add_argument("--full-layers", default="5,6,7", help="layers whose heads keep the full cache")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    spec = dict(length=args.length, repeats=args.repeats, full_layers=[int(x) for x in args.full_layers.split(",") if x])
    sys.path.insert(0, HERE)
    from scale import run_timed_and_measured

    t0 = time.perf_counter()
    (out, error), (measured, mem_error) = run_timed_and_measured(__file__, "--worker", spec)
    if out is None or measured is None:
        sys.exit(error or mem_error)
    out["peak"] = measured["peak"]
    print(f"threads: {os.environ.get('OMP_NUM_THREADS', '(unset)')}; gpt2-shape, {out['n_prompts']} prompts x "
          f"{args.length} tokens; warm-up + best of {args.repeats} alternating rounds")
    print(f"policy: {out['n_full_heads']} of 144 heads full, the rest sink 4 + window 64; KV kept {out['kv_kept']:.1%}")
    (bare_name, grid_name) = list(out["seconds"])
    print(f"  {'':36s} {'seconds':>8s} {'peak added GiB':>15s}")
    for name in (bare_name, grid_name):
        print(f"  {name:36s} {out['seconds'][name]:8.2f} {out['peak'][name] / GiB:15.2f}")
    print(f"  ratio grid / bare: time {out['seconds'][grid_name] / out['seconds'][bare_name]:.2f}x, "
          f"memory {out['peak'][grid_name] / max(out['peak'][bare_name], 1):.2f}x")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
