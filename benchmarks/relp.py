"""RelP against attribution patching, side by side in one process: the Pearson correlation of each
with exact activation patching (each head / MLP output patched from the corrupted run alone;
`activation_patching(direction="noise")`, an affine map of the metric change) on every trained
zoo model, and the seconds each takes (warmed up, best of 3). Run:

    OMP_NUM_THREADS=1 python benchmarks/relp.py [--prompts 16]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

import circuitkit as ck

MODELS = ("induction-trained", "ioi-trained", "needle-trained", "tiny-lm", "induction-handbuilt",
          "retrieval-handbuilt")


def best_of(fn, n: int = 3) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(n):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in MODELS:
        model = ck.load_model(f"zoo:{name}")
        task = ck.zoo_task(name, model)
        task = task.subset(range(min(len(task), args.prompts)))
        for target in ("head_out", "mlp_out") if not model.cfg.attn_only else ("head_out",):
            exact = ck.activation_patching(model, task, target, direction="noise", progress=False)
            t_atp, atp = best_of(lambda m=model, t=task, g=target: ck.attribution_patching(m, t, g, progress=False))
            t_relp, relp = best_of(lambda m=model, t=task, g=target: ck.relp(m, t, g))
            truth = exact.values
            rows.append({"model": name, "target": target, "n": len(truth),
                         "pearson_atp": pearson(atp.values, truth), "pearson_relp": pearson(relp.values, truth),
                         "seconds_atp": t_atp, "seconds_relp": t_relp, "time_ratio": t_relp / t_atp})
        print(pd.DataFrame(rows[-2:]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return table


if __name__ == "__main__":
    main()
