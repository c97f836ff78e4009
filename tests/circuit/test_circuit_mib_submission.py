"""MIB circuit-track submission folders against what MIB's evaluation finds and loads in them.

MIB's leaderboard back end (github:mttk/MIB-circuit-track-autoeval, on EAP-IG 61367f1) is not on
PyPI; ``mib_finds`` and ``mib_branch`` below re-state, from reading it, how it finds the work in a
submission folder (not copied):

* ``eval_submissions.process_directory``: for each sub-folder (files are ignored) whose lower-cased
  name holds ``abs`` and ``true`` / ``false``, look inside it (those circuits are evaluated for CMD
  / CPR only); otherwise the task is the first of ``ioi, mcqa, arithmetic_addition,
  arithmetic-addition, arithmetic_subtraction, arithmetic-subtraction, arc_easy, arc-easy,
  arc_challenge, arc-challenge`` the name starts with or holds after an ``_``, the model likewise of
  ``gpt2, qwen2.5, gemma2, llama3``; a folder with no task or no model is skipped;
* ``run_evaluation.run_evaluation``: a pair outside its ``COL_MAPPING`` gives no result; a folder of
  exactly one entry is importance scores (``.json`` -> ``Graph.from_json``, ``.pt`` ->
  ``Graph.from_pt``, anything else fails), of two or more entries circuits
  (``evaluate_area_under_curve_multifile``: the first nine ``.json`` / ``.pt`` files listed,
  loaded with ``load_graph_from_json`` / ``_from_pt``, sorted by ``weighted_edge_count`` and placed
  at 0.1 ... 50 %, the model's ``EDGE_COUNTS`` appended at 100 % with faithfulness 1).

The fixture ``data/mib_reads_submission.json`` was written by that code
(``make_mib_submission_fixtures.py`` beside this file; the model, data set and forward passes
stubbed, the finding, loading, ``apply_topn`` and ``prune`` real) on folders circuitkit wrote from
seeded scores of GPT-2 small's graph: what it found, which branch it took, each file it loaded
(in-graph edge count and a digest of the edge names) and each circuit it evaluated.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from make_mib_submission_fixtures import (  # beside this file (pytest puts its folder on the path)
    digest,
    gpt2_scores,
)

from circuitkit import Scores, names
from circuitkit.circuit import Circuit
from circuitkit.circuit.evaluation import mib_prune, mib_size, rank_edges
from circuitkit.circuit.io import check_mib_submission, mib_circuits, mib_submission, to_mib
from circuitkit.circuit.io.mib import mib_edges
from circuitkit.circuit.io.mib_folder import (
    MIB_MODELS,
    MIB_PAIRS,
    MIB_PERCENTAGES,
    MIB_TASKS,
    circuit_file,
    with_in_graph,
)
from circuitkit.cli import main

MIB_READ = json.loads((Path(__file__).parent / "data" / "mib_reads_submission.json").read_text())
THEIR_TASKS = ("ioi", "mcqa", "arithmetic_addition", "arithmetic-addition", "arithmetic_subtraction",
               "arithmetic-subtraction", "arc_easy", "arc-easy", "arc_challenge", "arc-challenge")
THEIR_MODELS = ("gpt2", "qwen2.5", "gemma2", "llama3")
THEIR_PAIRS = {"ioi_gpt2", "ioi_qwen2.5", "ioi_gemma2", "ioi_llama3", "mcqa_qwen2.5", "mcqa_gemma2", "mcqa_llama3",
               "arithmetic-addition_llama3", "arithmetic-subtraction_llama3", "arc-easy_gemma2", "arc-easy_llama3",
               "arc-challenge_llama3"}


def mib_finds(root: Path, prefix: str = "") -> list[dict]:
    """The task / model folders the back end's ``process_directory`` finds under ``root``."""
    found = []
    for entry in os.listdir(root):
        path, lower = root / entry, entry.lower()
        if not path.is_dir():
            continue
        if "abs" in lower and ("true" in lower or "false" in lower):
            found += mib_finds(path, os.path.join(prefix, entry))
            continue
        task = next((t for t in THEIR_TASKS if lower.startswith(t) or f"_{t}" in lower), None)
        model = next((m for m in THEIR_MODELS if lower.startswith(m) or f"_{m}" in lower), None)
        if task is None or model is None:
            continue
        absolute = None
        if "abs" in prefix.lower():
            absolute = True if "true" in prefix.lower() else False if "false" in prefix.lower() else None
        found.append({"task": task, "model": model, "absolute_specified": absolute,
                      "path_info": os.path.join(prefix, entry) if prefix else entry})
    return sorted(found, key=lambda c: c["path_info"])


def mib_branch(folder: Path, task: str, model: str) -> str | None:
    """Which evaluation ``run_evaluation`` runs on a found folder (None: no result)."""
    if f"{task.replace('_', '-')}_{model}" not in THEIR_PAIRS:
        return None
    n = len(os.listdir(folder))
    return "evaluate_area_under_curve" if n == 1 else "evaluate_area_under_curve_multifile" if n >= 2 else None


def in_graph_edges(path: Path) -> list[str]:
    return [k for k, v in json.loads(path.read_text())["edges"].items() if v["in_graph"]]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The fixture's submission folders, written by today's circuitkit."""
    scores = gpt2_scores()
    base = tmp_path_factory.mktemp("mib")
    roots = {name: base / name for name in ("importances", "circuits-signed")}
    mib_submission(scores, roots["importances"], task="ioi", model="gpt2")
    (roots["importances"] / "notes").mkdir()
    mib_submission(scores, roots["circuits-signed"], task="ioi", model="gpt2", mode="circuits")
    return scores, roots


def test_mib_finds_and_reads_the_folders_as_it_did(written):
    _, roots = written
    for name, root in roots.items():
        recorded = MIB_READ["submissions"][name]
        assert mib_finds(root) == recorded["configs"] == [
            {"task": "ioi", "model": "gpt2", "absolute_specified": None, "path_info": "ioi_gpt2"}]
        for absolute in (True, False):
            run = recorded["runs"][f"ioi_gpt2/abs-{absolute}"]
            assert sorted(os.listdir(root / "ioi_gpt2")) == run["listed"]
            assert mib_branch(root / "ioi_gpt2", "ioi", "gpt2") == run["branch"]
            assert run["model"] == MIB_MODELS["gpt2"].hf_name
            for loaded in run["loaded"]:  # every file MIB loaded holds, in the graph, what circuitkit wrote
                edges = in_graph_edges(root / "ioi_gpt2" / loaded["file"])
                assert (len(edges), digest(edges)) == (loaded["n"], loaded["digest"])
    assert [x["file"] for x in MIB_READ["submissions"]["circuits-signed"]["runs"]["ioi_gpt2/abs-True"]["loaded"]] == \
        sorted(circuit_file(pct) for pct in MIB_PERCENTAGES)
    assert [e["mode"] for e in check_mib_submission(roots["circuits-signed"])] == ["circuits"]


@pytest.mark.parametrize("ranking", ["signed", "absolute"])
def test_the_nine_circuits_are_what_mib_cuts_from_the_importances(written, ranking):
    """MIB's own apply_topn(int(pct * n), absolute, prune=True) on the importances file, then the
    prune of evaluate_graph, evaluated exactly the edges of circuitkit's nine circuits; and the
    nine files, read by MIB, give the same curve."""
    scores, _ = written
    absolute = ranking == "absolute"
    ours = mib_circuits(scores, "gpt2", ranking)
    from_importances = MIB_READ["submissions"]["importances"]["runs"][f"ioi_gpt2/abs-{absolute}"]
    cut_by_mib = from_importances["evaluated"][1:-1]  # [0]: the empty circuit, [-1]: the whole model
    assert [(len(ours[pct]), digest(ours[pct])) for pct in MIB_PERCENTAGES] == \
        [(x["n"], x["digest"]) for x in cut_by_mib]
    nine = MIB_READ["submissions"][f"circuits-{ranking}"]["runs"]
    for run in nine.values():
        assert {x["file"]: (x["n"], x["digest"]) for x in run["loaded"]} == \
            {circuit_file(pct): (len(ours[pct]), digest(ours[pct])) for pct in MIB_PERCENTAGES}
        assert run["weighted_edge_counts"] == sorted(len(e) for e in ours.values()) + [MIB_READ["n_edges"]]
        assert run["faithfulnesses"] == pytest.approx(from_importances["faithfulnesses"])
    for pct in MIB_PERCENTAGES:  # each within its size
        assert len(ours[pct]) <= mib_size(pct, MIB_READ["n_edges"]) == int(pct / 100 * MIB_READ["n_edges"])


def test_mib_models_have_mibs_edge_counts():
    assert {name: m.n_edges for name, m in MIB_MODELS.items()} == \
        {k: v for k, v in MIB_READ["edge_counts"].items() if k in MIB_MODELS}
    assert {f"{t}_{m}" for t, m in MIB_PAIRS} == THEIR_PAIRS and set(MIB_TASKS) == {t for t in THEIR_TASKS if "_" not in t}


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    scores = gpt2_scores()
    cases = [
        (dict(task="ioi", model="gpt3"), "no model 'gpt3'"),
        (dict(task="sst2", model="gpt2"), "no task 'sst2'"),
        (dict(task="mcqa", model="gpt2"), "evaluates no mcqa circuits of gpt2"),
        (dict(task="ioi", model="qwen2.5"), "12 layers x 12 heads"),
        (dict(task="ioi", model="gpt2", mode="all"), "mode must be one of"),
        (dict(task="ioi", model="gpt2", mode="circuits", ranking="abs"), "ranking must be one of"),
    ]
    for kwargs, message in cases:
        with pytest.raises((ValueError, KeyError), match=message):
            mib_submission(scores, tmp_path / "sub", **kwargs)
    partial = scores.subset(scores.labels[:-5])
    with pytest.raises(ValueError, match="no score for 5 of gpt2's 32491 edges"):
        mib_submission(partial, tmp_path / "sub", task="ioi", model="gpt2", mode="circuits")
    small = Circuit.from_scores(Scores(torch.ones(3), ["a0.h0", "a1.h1", "m1"], "x", meta={"n_layers": 2, "n_heads": 2}))
    with pytest.raises(ValueError, match="2 layers x 2 heads"):
        mib_submission(small, tmp_path / "sub", task="ioi", model="gpt2")
    heads = Scores(torch.ones(12 * 13), [names.head(layer, h) for layer in range(12) for h in range(12)]
                   + [names.mlp(layer) for layer in range(12)], "x")
    with pytest.raises(ValueError, match="give edge scores"):
        mib_submission(heads, tmp_path / "sub", task="ioi", model="gpt2", mode="circuits")
    with pytest.raises(ValueError, match="exactly 9 Circuits"):
        mib_submission([small] * 8, tmp_path / "sub", task="ioi", model="gpt2", mode="circuits")
    with pytest.raises(TypeError, match="takes Scores or a Circuit"):
        mib_submission([small], tmp_path / "sub", task="ioi", model="gpt2")
    assert not (tmp_path / "sub").exists() or not any((tmp_path / "sub").iterdir())


def test_node_scores_are_a_node_level_importances_file(tmp_path):
    labels = [names.head(layer, h) for layer in range(12) for h in range(12)] + [names.mlp(layer) for layer in range(12)]
    scores = Scores(torch.arange(len(labels), dtype=torch.float32), labels, "head-ablation",
                    meta={"n_layers": 12, "n_heads": 12})
    path = mib_submission(scores, tmp_path, task="ioi", model="gpt2")
    data = json.loads((path / "importances.json").read_text())
    assert data["nodes"]["a0.h1"]["score"] == -1.0 and data["cfg"]["d_model"] == 768
    with pytest.raises(ValueError, match="no score for 1 of gpt2's 156 nodes"):
        mib_submission(scores.subset(labels[1:]), tmp_path, task="ioi", model="gpt2")


def test_a_new_write_replaces_the_folder_whole(written, tmp_path):
    """A task / model folder is written beside and renamed in: the nine circuits do not linger next
    to a later importances file (which would turn it into a ten-file circuits folder for MIB)."""
    scores, roots = written
    shutil.copytree(roots["circuits-signed"], tmp_path, dirs_exist_ok=True)
    assert len(os.listdir(tmp_path / "ioi_gpt2")) == 9
    (tmp_path / "mcqa_qwen2.5").mkdir()  # another pair's folder is left alone
    path = mib_submission(scores, tmp_path, task="ioi", model="gpt2")
    assert os.listdir(path) == ["importances.json"] and mib_branch(path, "ioi", "gpt2") == "evaluate_area_under_curve"
    assert sorted(os.listdir(tmp_path)) == ["ioi_gpt2", "mcqa_qwen2.5"]  # no temp folder left


def test_check_restates_what_the_back_end_skips(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(ValueError, match="notes: MIB reads no task / model"):
        check_mib_submission(tmp_path)
    (tmp_path / "notes").rmdir()
    (tmp_path / "ioi_gpt2").mkdir()
    with pytest.raises(ValueError, match="empty"):
        check_mib_submission(tmp_path)
    (tmp_path / "ioi_gpt2" / "importances.json").write_text("{}")
    (tmp_path / "abs-True" / "arc-easy_llama3").mkdir(parents=True)
    (tmp_path / "abs-True" / "arc-easy_llama3" / "scores.pt").write_bytes(b"")
    entries = check_mib_submission(tmp_path)
    assert [(e["task"], e["model"], e["mode"]) for e in entries] == [("arc-easy", "llama3", "importances"),
                                                                      ("ioi", "gpt2", "importances")]
    assert [(c["task"], c["model"], c["absolute_specified"]) for c in mib_finds(tmp_path)] == \
        [("arc-easy", "llama3", True), ("ioi", "gpt2", None)]
    (tmp_path / "ioi_gpt2" / "README.md").write_text("")
    with pytest.raises(ValueError, match="exactly 9 circuits and nothing else"):
        check_mib_submission(tmp_path)
    assert mib_branch(tmp_path / "ioi_gpt2", "ioi", "gpt2") == "evaluate_area_under_curve_multifile"
    (tmp_path / "mcqa_gpt2").mkdir()
    with pytest.raises(ValueError, match="evaluates no mcqa circuits of gpt2"):
        check_mib_submission(tmp_path)


def test_with_in_graph_is_to_mib_of_the_cut_circuit():
    edges = names.all_edges(2, 2, True)
    scores = Scores(torch.randn(len(edges), generator=torch.Generator().manual_seed(3)), edges, "eap-ig",
                    meta={"n_layers": 2, "n_heads": 2, "has_mlp": True})
    full = Circuit.from_scores(scores)
    data = to_mib(full, d_model=16)
    assert data["cfg"]["circuitkit"]["pruned_dangling"] == []
    order = rank_edges(scores, mib_edges(2, 2), by_abs=False)
    for n in (3, 8, 20, len(edges)):
        kept = mib_prune(order[:n])
        assert with_in_graph(data, kept) == to_mib(full.with_members(kept, "edge", prune=False), d_model=16)


def test_command_line_writes_a_submission(tmp_path, capsys):
    edges = mib_edges(12, 12)
    scores = gpt2_scores()
    source = tmp_path / "scores.json"
    source.write_text(json.dumps(to_mib(Circuit.from_scores(scores), d_model=768)))
    assert main(["export-mib-submission", str(source), "--mib-task", "ioi", "--mib-model", "gpt2", "--out",
                 str(tmp_path / "sub")]) == 0
    out = capsys.readouterr().out
    assert "ioi_gpt2 (importances)" in out and "at least 2 tasks and 2 models" in out
    written = json.loads((tmp_path / "sub" / "ioi_gpt2" / "importances.json").read_text())
    assert set(written["edges"]) == set(edges)
    assert main(["export-mib-submission", str(source), "--mib-task", "mcqa", "--mib-model", "gpt2", "--out",
                 str(tmp_path / "sub")]) == 2
    assert "evaluates no mcqa circuits of gpt2" in capsys.readouterr().err
