"""Running studies: rows match the slow obvious path, resume, spec changes, executors agree, report."""

import signal
import time

import pandas as pd
import pytest
import yaml
from study_helpers import assert_same_table, small_spec, study_cli

from circuitkit import load_model
from circuitkit.ablation import ablate
from circuitkit.studies import SpecError, StudySpec, load_results, run_study, top_k_heads
from circuitkit.studies.checks import build_unit_task
from circuitkit.studies.store import part_files

KILL_SPEC = dict(tasks=[{"name": "ioi", "params": {"n_prompts": 6}}])  # 24 units, each committed on its own
PARALLEL_SPEC = dict(models=["zoo:tiny-mlp"], tasks=[{"name": "ioi", "params": {"n_prompts": 6}}])  # 12 units


def _subset(reference, spec):
    return reference[reference.model.isin(spec["models"]) & reference.task.isin([t["name"] for t in spec["tasks"]])]


@pytest.fixture(scope="module")
def reference(study_zoo, tmp_path_factory):
    """An uninterrupted serial run of the kill-test spec."""
    out = tmp_path_factory.mktemp("reference") / "out"
    with pytest.MonkeyPatch.context() as patch:  # the test zoo for this run only, not for later modules
        patch.setenv("CIRCUITKIT_ZOO_PATH", str(study_zoo))
        return run_study(small_spec(out, **KILL_SPEC), progress=False)


def test_rows_match_ablate(zoo_env, tmp_path, reference):
    """Each row's numbers equal circuitkit.ablation.ablate on the same task (all prompts in one batch)."""
    spec = small_spec(tmp_path / "out", models=["zoo:tiny-mlp"], tasks=[{"name": "ioi", "params": {"n_prompts": 6}}],
                      targets={"every_mlp": True, "head_sets": {"pair": ["a0.h1", "a1.h0"]}}, batch_size=None,
                      metrics=["logit_diff"])
    results = run_study(spec, progress=False)
    assert len(results) == 3 * 3  # 3 ablations x (m0, m1, pair)
    model = load_model("zoo:tiny-mlp")
    task = build_unit_task(StudySpec.from_dict(spec).tasks[0], model.tokenizer, 0)
    for row in results.itertuples():
        slow = ablate(model, task, row.components.split(","), row.ablation, seed=row.seed)
        assert row.logit_diff == pytest.approx(slow.ablated, rel=1e-5, abs=1e-6)
        assert row.logit_diff_clean == pytest.approx(slow.clean, rel=1e-5, abs=1e-6)
        assert row.recovered == pytest.approx(slow.recovered, rel=1e-4, abs=1e-5)
    # Chunked forward passes (batch_size 4 of 6 prompts) give the same zero / mean numbers.
    chunked = reference[(reference.model == "zoo:tiny-mlp") & reference.ablation.isin(["zero", "mean"])]
    whole = run_study(small_spec(tmp_path / "whole", models=["zoo:tiny-mlp"], tasks=[{"name": "ioi", "params": {"n_prompts": 6}}],
                                 ablations=["zero", "mean"], batch_size=None), progress=False)
    assert_same_table(chunked, whole)


def test_top_k_targets(zoo_env, tmp_path):
    spec = small_spec(tmp_path / "out", models=["zoo:tiny-attn"], ablations=["zero"],
                      targets={"top_k_from": {"score": "previous_token", "k": 2}}, tasks=["induction"])
    results = run_study(spec, progress=False)
    expected = top_k_heads(load_model("zoo:tiny-attn"), "previous_token", 2)
    assert results.target.tolist() == ["top2:previous_token"] and results.components[0] == ",".join(expected)
    assert results.n_components[0] == 2


def test_resume_and_changed_spec(zoo_env, tmp_path, reference):
    spec = small_spec(tmp_path / "out", **PARALLEL_SPEC, ablations=["zero"])
    first = run_study(spec, progress=False)
    parts = part_files(tmp_path / "out")
    stamps = [p.stat().st_mtime_ns for p in parts]
    again = run_study(spec, progress=False)  # nothing left to do: no part rewritten
    assert [p.stat().st_mtime_ns for p in part_files(tmp_path / "out")] == stamps
    assert_same_table(first, again)
    expected = _subset(reference, spec)
    assert_same_table(first, expected[expected.ablation == "zero"])
    changed = small_spec(tmp_path / "out", **PARALLEL_SPEC, ablations=["zero"], seeds=[7])
    with pytest.raises(SpecError, match=r"holds results of a different spec .*--force-new"):
        run_study(changed, progress=False)
    assert len(load_results(tmp_path / "out")) == len(first)  # refused before touching anything
    fresh = run_study(changed, force_new=True, progress=False)
    assert set(fresh.seed) == {7} and len(fresh) == len(first)


def test_sigkill_midway_then_resume(zoo_env, tmp_path, reference, capsys):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(small_spec("out", **KILL_SPEC)))
    out = tmp_path / "out"
    proc = study_cli("run", str(spec_path), "--no-progress")
    deadline = time.time() + 60
    while len(part_files(out)) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_rows = len(load_results(out))
    assert 3 <= killed_rows < len(reference)
    # Resume with the same command (in this process: a second interpreter start costs more than the run).
    from circuitkit.cli import main

    assert main(["study", "run", str(spec_path), "--no-progress"]) == 0
    assert f"{len(reference)} rows" in capsys.readouterr().out
    assert not list((out / "parts").glob(".*.tmp"))  # leftovers of the killed write are gone
    assert_same_table(load_results(out), reference)
    # A changed spec is refused on the command line with a one-line error.
    spec_path.write_text(yaml.safe_dump(small_spec("out", seeds=[5])))
    assert main(["study", "run", str(spec_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "different spec" in err and "--force-new" in err and "Traceback" not in err


def test_process_executor_matches_serial(zoo_env, tmp_path, reference):
    spec = small_spec(tmp_path / "out", **PARALLEL_SPEC)
    results = run_study(spec, executor="process", workers=2, progress=False)
    assert_same_table(results, _subset(reference, spec))


def test_ray_executor_matches_serial(zoo_env, tmp_path, reference):
    import ray

    # run_study starts (and stops) a local Ray instance: ray.init(num_cpus=2, include_dashboard=False)
    spec = small_spec(tmp_path / "out", **PARALLEL_SPEC)
    results = run_study(spec, executor="ray", workers=2, progress=False)
    assert not ray.is_initialized()
    assert_same_table(results, _subset(reference, spec))


def test_report(zoo_env, tmp_path):
    from circuitkit.cli import main

    out = tmp_path / "rep"
    run_dir = tmp_path / "run"
    results_dir = run_study(small_spec(run_dir, models=["zoo:tiny-attn"], tasks=["induction"],
                                       targets={"every_head": True, "head_sets": {"both": ["a0.h0", "a0.h1"]}}),
                            progress=False)
    assert len(results_dir) == 3 * 5
    assert main(["study", "report", str(run_dir), "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.count("plotly-graph-div") == 3 and "Most damaging targets" in page and "zoo:tiny-attn on induction" in page
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 15 and {"damage", "recovered", "logit_diff_clean", "n_seeds"} <= set(summary.columns)
    first = summary[summary.ablation == "zero"]
    assert first.recovered.is_monotonic_increasing  # most damaging first


@pytest.mark.parametrize("zoo", ["induction-trained", "tiny-lm"])
def test_top_k_heads_rank_as_transformer_lens_detect_head(zoo):
    """Studies pick heads through circuitkit.heads; the ranking is TransformerLens's own detector's."""
    from transformer_lens.head_detector import detect_head

    from circuitkit import names
    from circuitkit.tasks.builders import induction

    model = load_model(f"zoo:{zoo}")
    seq_len = max(2, min(10, (model.cfg.n_ctx - 2) // 2))
    task = induction(model.tokenizer, n_prompts=4, seq_len=seq_len, seed=0, prepend_bos=False)
    texts = [model.to_string(row) for row in task.clean]
    for score in ("induction", "previous_token", "duplicate_token"):
        grid = detect_head(model, texts, f"{score}_head")
        ranked = sorted((-float(grid[layer, h]), layer, h) for layer in range(grid.shape[0]) for h in range(grid.shape[1]))
        assert top_k_heads(model, score, 3) == tuple(names.head(layer, h) for _, layer, h in ranked[:3])
