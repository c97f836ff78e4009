"""Write ``data/mib_reads_submission.json``: what MIB's own evaluation code finds and loads in
submission folders circuitkit writes (the fixture of ``test_circuit_mib_submission.py``).

MIB's leaderboard evaluates submissions with github:mttk/MIB-circuit-track-autoeval (written with
commit b48d9ba), a copy of github:hannamw/MIB-circuit-track plus the back end, on EAP-IG at the
commit it pins as a submodule (github:hannamw/EAP-IG 61367f1). Run this from checkouts of both::

    python tests/circuit/make_mib_submission_fixtures.py /path/to/MIB-circuit-track-autoeval /path/to/EAP-IG

Stubbed, and nothing else: ``pygraphviz`` and ``eap.visualization`` (imported by EAP-IG's graph
module to draw; matplotlib / graphviz are not needed to load or prune), and what needs the real
model or data set: ``HookedTransformer.from_pretrained``, ``HFEAPDataset``, ``get_metric`` and
EAP-IG's ``evaluate_baseline`` / ``evaluate_graph`` (the stand-in runs the real ``graph.prune()``,
as ``evaluate_graph`` does first, records the in-graph edges it would run, and returns their
share of the model's edges as the "metric"). The back end's ``process_directory`` (a function
nested in ``eval_submissions.main``) is taken from that file's source and run as written.

Three submission folders, from seeded random edge scores of GPT-2 small's graph (MIB's ``gpt2``):
``importances`` (one ``ioi_gpt2/importances.json``, plus a folder MIB skips), ``circuits-signed``
and ``circuits-absolute`` (nine circuits each). For each, with ``absolute`` True (CMD) and False
(CPR), the fixture holds what ``process_directory`` found, which branch ``run_evaluation`` took
(one file: ``evaluate_area_under_curve``; several: ``..._multifile``), the files it loaded with
each loaded graph's in-graph edge count and digest, and each circuit it evaluated (after
``apply_topn`` for importances), with the edge counts and faithfulness curve it returned.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import sys
import tempfile
import types
from pathlib import Path

import torch

from circuitkit import Scores
from circuitkit.circuit.io import mib_submission
from circuitkit.circuit.io.mib import mib_edges

DATA = Path(__file__).parent / "data"
SEED = 0
AUTOEVAL_COMMIT, EAP_IG_COMMIT = "b48d9ba", "61367f1"


def gpt2_scores() -> Scores:
    """The scores of every fixture: seeded, in circuitkit's sign, one per edge of gpt2's EAP-IG graph."""
    edges = mib_edges(12, 12)
    return Scores(torch.randn(len(edges), generator=torch.Generator().manual_seed(SEED)), edges, "eap-ig",
                  task="ioi", meta={"n_layers": 12, "n_heads": 12, "has_mlp": True})


def digest(edges) -> str:
    return hashlib.sha256("\n".join(sorted(edges)).encode()).hexdigest()[:16]


def in_graph(graph) -> list[str]:
    return [name for name, edge in graph.edges.items() if edge.in_graph]


def main(autoeval: Path, eap_ig: Path) -> None:
    sys.path[:0] = [str(autoeval), str(eap_ig / "src")]
    pygraphviz = types.ModuleType("pygraphviz")
    pygraphviz.AGraph = object  # only a return annotation of Graph.to_graphviz at load time
    sys.modules["pygraphviz"] = pygraphviz
    viz = types.ModuleType("eap.visualization")
    viz.get_color = viz.generate_random_color = lambda *args, **kwargs: "#000000"
    sys.modules["eap.visualization"] = viz
    import MIB_circuit_track.evaluation as mib_eval
    import run_evaluation as mib_run
    from MIB_circuit_track.utils import MODEL_NAME_TO_FULLNAME, TASKS_TO_HF_NAMES

    source = (autoeval / "eval_submissions.py").read_text()
    nested = next(node for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.FunctionDef) and node.name == "process_directory")
    scope = {"os": os, "logging": logging, "TASKS_TO_HF_NAMES": TASKS_TO_HF_NAMES,
             "MODEL_NAME_TO_FULLNAME": MODEL_NAME_TO_FULLNAME}
    exec(compile(ast.Module(body=[nested], type_ignores=[]), "eval_submissions.py", "exec"), scope)
    process_directory = scope["process_directory"]

    n_edges = len(mib_edges(12, 12))
    log: dict = {}

    class FakeModel(dict):  # Graph.from_model reads a dict's keys; run_evaluation sets cfg flags
        def __init__(self):
            super().__init__(n_layers=12, n_heads=12, parallel_attn_mlp=False, d_model=768)
            self.cfg = types.SimpleNamespace()
            self.tokenizer = None

    class FakeHookedTransformer:
        @staticmethod
        def from_pretrained(name, **kwargs):
            log["model"] = name
            return FakeModel()

    class FakeDataset:
        def __init__(self, *args, **kwargs):
            pass

        def to_dataloader(self, batch_size):
            return []

    def evaluate_baseline(model, dataloader, metrics, **kwargs):
        return torch.tensor([1.0])

    def evaluate_graph(model, graph, dataloader, metrics, **kwargs):
        graph.prune()  # what EAP-IG's evaluate_graph does first
        edges = in_graph(graph)
        log["evaluated"].append({"n": len(edges), "digest": digest(edges)})
        return torch.tensor([len(edges) / n_edges])

    def recording(name, function):
        def wrapper(*args, **kwargs):
            log["branch"] = name
            return function(*args, **kwargs)
        return wrapper

    def loading(function):
        def wrapper(path):
            graph = function(path)
            edges = in_graph(graph)
            log["loaded"].append({"file": os.path.basename(path), "n": len(edges), "digest": digest(edges)})
            return graph
        return wrapper

    mib_run.HookedTransformer = FakeHookedTransformer
    mib_run.HFEAPDataset = FakeDataset
    mib_run.get_metric = lambda *args, **kwargs: (lambda *a, **k: None)
    mib_run.evaluate_area_under_curve = recording("evaluate_area_under_curve", mib_eval.evaluate_area_under_curve)
    mib_run.evaluate_area_under_curve_multifile = recording("evaluate_area_under_curve_multifile",
                                                            mib_eval.evaluate_area_under_curve_multifile)
    mib_eval.evaluate_baseline, mib_eval.evaluate_graph = evaluate_baseline, evaluate_graph
    mib_eval.load_graph_from_json = loading(mib_eval.load_graph_from_json)
    graph = mib_run.Graph  # run_evaluation loads a one-file folder with Graph.from_json / from_pt
    mib_run.Graph = types.SimpleNamespace(from_json=loading(graph.from_json), from_pt=loading(graph.from_pt))

    scores = gpt2_scores()
    result: dict = {"autoeval_commit": AUTOEVAL_COMMIT, "eap_ig_commit": EAP_IG_COMMIT, "seed": SEED,
                    "n_edges": n_edges, "edge_counts": mib_eval.EDGE_COUNTS, "submissions": {}}
    with tempfile.TemporaryDirectory() as tmp:
        roots = {name: Path(tmp) / name for name in ("importances", "circuits-signed", "circuits-absolute")}
        mib_submission(scores, roots["importances"], task="ioi", model="gpt2")
        (roots["importances"] / "notes").mkdir()  # a folder MIB's back end skips
        mib_submission(scores, roots["circuits-signed"], task="ioi", model="gpt2", mode="circuits")
        mib_submission(scores, roots["circuits-absolute"], task="ioi", model="gpt2", mode="circuits",
                       ranking="absolute")
        for name, root in roots.items():
            configs = sorted(process_directory(str(root)), key=lambda c: c["path_info"])
            runs = {}
            for config in configs:
                for absolute in (True, False):
                    log.update(evaluated=[], loaded=[], branch=None)
                    out = mib_run.run_evaluation(config["circuit_dir"], config["model"], config["task"], "test",
                                                 "circuitkit", "edge", absolute=absolute)
                    runs[f"{config['path_info']}/abs-{absolute}"] = {
                        "listed": sorted(os.listdir(config["circuit_dir"])), "branch": log["branch"],
                        "model": log["model"], "loaded": sorted(log["loaded"], key=lambda x: x["file"]),
                        "evaluated": log["evaluated"], "weighted_edge_counts": out["weighted_edge_counts"],
                        "faithfulnesses": out["faithfulnesses"]}
            result["submissions"][name] = {
                "configs": [{k: v for k, v in c.items() if k != "circuit_dir"} for c in configs], "runs": runs}
    (DATA / "mib_reads_submission.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {DATA / 'mib_reads_submission.json'}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/circuit/make_mib_submission_fixtures.py /path/to/MIB-circuit-track-autoeval "
                 "/path/to/EAP-IG (checkouts of mttk/MIB-circuit-track-autoeval and hannamw/EAP-IG)")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
