"""MIB / EAP-IG JSON export of a large circuit: seconds for ``circuitkit export --to mib`` (read the
node-link file, prune dangling edges, write the MIB JSON) and for the steps inside it, on a
random-score edge circuit of a model shape with about 10^6 edges (40 layers x 20 heads by
default), a tenth of them in the graph. Run:

    python benchmarks/mib_export.py [--layers 40] [--heads 20] [--keep 0.1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from circuitkit import Scores, names
from circuitkit.circuit import Circuit, load_circuit, save_circuit
from circuitkit.circuit.io import to_mib
from circuitkit.cli import main as cli


def timed(label: str, fn):
    start = time.perf_counter()
    out = fn()
    print(f"{label:34s} {time.perf_counter() - start:7.1f} s", flush=True)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--heads", type=int, default=20)
    parser.add_argument("--keep", type=float, default=0.1, help="share of edges in the graph (top |score|)")
    args = parser.parse_args(argv)
    edges = names.all_edges(args.layers, args.heads)
    print(f"{len(edges):,} edges ({args.layers} layers x {args.heads} heads)")
    values = torch.randn(len(edges), generator=torch.Generator().manual_seed(0))
    scores = Scores(values, edges, "random", "none", "none", meta={"n_layers": args.layers, "n_heads": args.heads})
    circuit = timed("build Circuit (from_scores)", lambda: Circuit.from_scores(scores))
    circuit = timed("top_k", lambda: circuit.top_k(int(args.keep * len(edges))))
    circuit.meta["d_model"] = 64
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "c.json", Path(tmp) / "c.mib.json"
        timed("save node-link JSON", lambda: save_circuit(circuit, src))
        timed("  load node-link JSON", lambda: load_circuit(src))
        timed("  prune_dangling", circuit.prune_dangling)
        timed("  to_mib", lambda: to_mib(circuit))
        timed("circuitkit export --to mib (whole)", lambda: cli(["export", str(src), "--to", "mib", "--out", str(dst)]))
        print(f"wrote {dst.stat().st_size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
