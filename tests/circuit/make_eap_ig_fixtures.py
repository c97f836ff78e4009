"""Write the EAP-IG fixtures of ``test_circuit_mib.py`` with EAP-IG's own code.

EAP-IG (github:hannamw/EAP-IG) is not on PyPI; run this from a checkout of it:
``python tests/circuit/make_eap_ig_fixtures.py /path/to/EAP-IG`` (written with commit 795f560).
Its ``eap.visualization`` needs matplotlib and pygraphviz only to draw; it is replaced by a stub.

* ``data/eap_ig_to_json_1l2h.json``: ``Graph.from_model`` of a 1-layer, 2-head model, seeded
  random edge scores, ``apply_topn(3)``, then ``to_json`` — a file as EAP-IG writes it.
* ``data/eap_ig_reads_circuitkit.json``: circuitkit's MIB export of an unpruned top-14 circuit
  (with dangling edges) and what EAP-IG's ``Graph.from_json`` then holds, before and after its
  ``prune()`` (what MIB's evaluation runs first); and the edges its ``apply_topn(n, absolute,
  prune=True)`` keeps at each size of MIB's curve (``int(pct * n_edges)``, MIB's percentages),
  signed and absolute, for the same circuit's scores.
"""

from __future__ import annotations

import json
import sys
import tempfile
import types
from pathlib import Path

import torch

from circuitkit import Scores, names
from circuitkit.circuit import Circuit
from circuitkit.circuit.io import to_mib

DATA = Path(__file__).parent / "data"
MIB_PERCENTAGES = (.001, .002, .005, .01, .02, .05, .1, .2, .5, 1)  # MIB_circuit_track/evaluation.py


def dangling_circuit() -> Circuit:
    """The ``dangling`` fixture of test_circuit_mib.py."""
    edges = names.all_edges(2, 2, True)
    values = torch.randn(len(edges), generator=torch.Generator().manual_seed(1))
    scores = Scores(values, edges, "eap-ig", task="ioi", meta={"n_layers": 2, "n_heads": 2, "has_mlp": True})
    circuit = Circuit.from_scores(scores).top_k(14, prune=False)
    circuit.meta["d_model"] = 16
    return circuit


def holds(graph) -> dict:
    return {"nodes": {n: bool(node.in_graph) for n, node in graph.nodes.items()},
            "edges": {e: [float(edge.score), bool(edge.in_graph)] for e, edge in graph.edges.items()}}


def main(checkout: Path) -> None:
    sys.path.insert(0, str(checkout / "src"))
    stub = types.ModuleType("eap.visualization")
    stub.get_color = stub.generate_random_color = lambda *args, **kwargs: "#000000"
    sys.modules["eap.visualization"] = stub
    from eap.graph import Graph

    graph = Graph.from_model({"n_layers": 1, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8})
    graph.scores[:] = torch.randn(graph.scores.shape, generator=torch.Generator().manual_seed(0))
    graph.apply_topn(3)
    graph.to_json(str(DATA / "eap_ig_to_json_1l2h.json"))

    export = to_mib(dangling_circuit())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "circuit.json"
        path.write_text(json.dumps(export))
        theirs = Graph.from_json(str(path))
    loaded = holds(theirs)
    theirs.prune()
    pruned = holds(theirs)
    # MIB's curve sizes on a bigger graph (6 layers x 6 heads), seeded scores in circuitkit's sign
    big = Graph.from_model({"n_layers": 6, "n_heads": 6, "parallel_attn_mlp": False, "d_model": 16})
    gen = torch.Generator().manual_seed(2)
    scores = {e: round(float(torch.randn((), generator=gen)), 6) for e in big.edges}
    for e, value in scores.items():
        big.edges[e].score = -value  # MIB's sign: loss attributions
    topn = {}
    for pct in MIB_PERCENTAGES:  # as MIB's evaluate_area_under_curve sizes its circuits
        for absolute in (False, True):
            big.apply_topn(int(pct * len(big.edges)), absolute, prune=True)
            topn[f"{pct}/{'abs' if absolute else 'signed'}"] = sorted(e for e, edge in big.edges.items() if edge.in_graph)
    result = {"eap_ig_commit": "795f560", "export": export, "loaded": loaded, "pruned": pruned,
              "apply_topn": {"scores": scores, "kept": topn}}
    (DATA / "eap_ig_reads_circuitkit.json").write_text(json.dumps(result, separators=(",", ":")) + "\n")
    print(f"wrote {DATA / 'eap_ig_to_json_1l2h.json'} and {DATA / 'eap_ig_reads_circuitkit.json'}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/circuit/make_eap_ig_fixtures.py /path/to/EAP-IG (a checkout of hannamw/EAP-IG)")
    main(Path(sys.argv[1]))
