"""Spec parsing and validation: every bad input fails with a clear message before any unit runs."""

import pytest
import yaml
from study_helpers import small_spec

from circuitkit.studies import SpecError, StudySpec, run_study, validate


def _bad(out, **changes):
    return small_spec(out, **changes)


@pytest.mark.parametrize("changes, match", [
    ({"modles": ["zoo:tiny-attn"]}, r"spec: unknown key 'modles' \(did you mean 'models'\?\)"),
    ({"ablations": ["zero", "meen"]}, r"ablations\[1\]: unknown ablation kind 'meen' \(did you mean 'mean'\?\)"),
    ({"tasks": [{"name": "ioj"}]}, r"tasks\[0\].name: unknown task 'ioj' \(did you mean 'ioi'\?\)"),
    ({"tasks": [{"name": "ioi", "params": {"n_promts": 4}}]}, r"tasks\[0\].params: task 'ioi' takes no parameter 'n_promts'"),
    ({"tasks": [{"name": "ioi"}, {"name": "ioi"}]}, r"two entries are labelled 'ioi'; give each a distinct"),
    ({"metrics": ["logit_dif"]}, r"metrics\[0\]: unknown metric 'logit_dif' \(did you mean 'logit_diff'\?\)"),
    ({"targets": {"every_heads": True}}, r"targets: unknown key 'every_heads'"),
    ({"targets": {"every_head": "yes"}}, r"targets.every_head: expected true or false"),
    ({"targets": {}}, r"targets: nothing to ablate"),
    ({"targets": {"head_sets": {"s": ["a1.x3"]}}}, r"targets.head_sets.s\[0\]: unknown component name 'a1.x3'"),
    ({"targets": {"top_k_from": {"score": "inductoin", "k": 2}}}, r"top_k_from.score: unknown head score 'inductoin'"),
    ({"targets": {"top_k_from": {"score": "induction", "k": 0}}}, r"top_k_from.k: expected a positive integer"),
    ({"seeds": [0, "1"]}, r"seeds: expected a non-empty list of integers"),
    ({"batch_size": 0}, r"batch_size: expected a positive integer"),
])
def test_structural_errors(tmp_path, changes, match):
    with pytest.raises(SpecError, match=match):
        StudySpec.from_dict(_bad(tmp_path / "out", **changes))


@pytest.mark.parametrize("changes, match", [
    ({"models": ["zoo:no-such-model"]}, r"models\[0\]: cannot load 'zoo:no-such-model': no zoo model named"),
    ({"targets": {"head_sets": {"s": ["a1.h2"]}}}, r"head_sets.s: head 'a1.h2' is out of range for model 'zoo:tiny-attn' "
                                                     r"\(2 layers x 2 heads.*use a0.h0 .. a1.h1"),
    ({"targets": {"top_k_from": {"score": "induction", "k": 5}}}, r"top_k_from.k: 5 exceeds the 4 heads"),
    ({"tasks": [{"name": "induction", "params": {"seq_len": 40}}]}, r"exceed the context \(64\)"),
    ({"tasks": [{"name": "induction", "params": {"n_prompts": 1}}]}, r"resample ablation needs at least 2 prompts"),
])
def test_model_dependent_errors(zoo_env, tmp_path, changes, match):
    spec = StudySpec.from_dict(_bad(tmp_path / "out", **changes))
    with pytest.raises(SpecError, match=match):
        run_study(spec, progress=False)
    assert not (tmp_path / "out" / "parts").exists()  # failed before any unit ran


def test_every_mlp_on_attention_only_model(zoo_env, tmp_path):
    spec = StudySpec.from_dict(_bad(tmp_path / "out", targets={"every_mlp": True}))
    with pytest.raises(SpecError, match=r"targets.every_mlp: model 'zoo:tiny-attn'.*attention-only\) has no MLPs"):
        validate(spec)


def test_output_dir_errors(zoo_env, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SpecError, match=r"output_dir: .*a_file' is a file, not a folder"):
        validate(StudySpec.from_dict(_bad(blocker)))
    with pytest.raises(SpecError, match=r"output_dir: cannot create .*a_file/sub.*choose a writable output_dir"):
        validate(StudySpec.from_dict(_bad(blocker / "sub")))


def test_files_yaml_and_toml(zoo_env, tmp_path):
    data = _bad("results")  # relative: resolved against the spec's folder
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    spec = StudySpec.from_file(tmp_path / "s.yaml")
    assert spec.output_dir == tmp_path / "results" and spec.tasks[1].params == {"n_prompts": 6}
    toml = "\n".join([
        'models = ["zoo:tiny-attn"]', 'ablations = ["zero"]', 'output_dir = "r"',
        "[[tasks]]", 'name = "induction"', "[targets]", "every_head = true",
    ])
    (tmp_path / "s.toml").write_text(toml)
    assert StudySpec.from_file(tmp_path / "s.toml").models == ["zoo:tiny-attn"]
    (tmp_path / "bad.yaml").write_text("models: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        StudySpec.from_file(tmp_path / "bad.yaml")
    # safe_load: a Python object tag is refused, never constructed
    (tmp_path / "evil.yaml").write_text("models: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        StudySpec.from_file(tmp_path / "evil.yaml")
    with pytest.raises(SpecError, match="unknown spec format '.json'"):
        (tmp_path / "s.json").write_text("{}")
        StudySpec.from_file(tmp_path / "s.json")


def test_hash_ignores_output_dir_only(tmp_path):
    a = StudySpec.from_dict(_bad(tmp_path / "a"))
    assert a.hash() == StudySpec.from_dict(_bad(tmp_path / "b")).hash()
    assert a.hash() != StudySpec.from_dict(_bad(tmp_path / "a", seeds=[1])).hash()
    assert StudySpec.from_dict(a.to_dict()) == a


def test_task_restricted_to_some_models(zoo_env, tmp_path):
    spec = StudySpec.from_dict(small_spec(
        tmp_path / "out", models=["zoo:tiny-attn", "zoo:tiny-mlp"],
        tasks=[{"name": "induction", "params": {"n_prompts": 4, "seq_len": 4}},
               {"name": "induction", "label": "mlp-only", "params": {"n_prompts": 4, "seq_len": 5},
                "models": ["zoo:tiny-mlp"]}],
        ablations=["zero"]))
    infos = validate(spec)
    from circuitkit.studies import plan_units

    units = plan_units(spec, infos)
    pairs = {(u.model, u.task) for u in units}
    assert pairs == {("zoo:tiny-attn", "induction"), ("zoo:tiny-mlp", "induction"), ("zoo:tiny-mlp", "mlp-only")}
    bad = small_spec(tmp_path / "out2", tasks=[{"name": "induction", "models": ["zoo:elsewhere"]}])
    with pytest.raises(SpecError, match=r"tasks\[0\].models: \['zoo:elsewhere'\] are not in the spec's models"):
        validate(StudySpec.from_dict(bad))


def test_prompt_counts_are_refused_with_the_real_cause(tmp_path, zoo_env):
    with pytest.raises(SpecError, match=r"tasks\[0\].params.n_prompts: expected a positive whole number of prompts, got 0"):
        StudySpec.from_dict(_bad(tmp_path / "out", tasks=[{"name": "ioi", "params": {"n_prompts": 0}}]))
    spec = StudySpec.from_dict(_bad(tmp_path / "out", tasks=[{"name": "ioi", "params": {"n_prompts": 100_000_000}}]))
    with pytest.raises(SpecError, match=r"n_prompts=100,000,000 is more than the 100,000 allowed: .* GB of token ids"):
        validate(spec)


def test_task_files_and_relative_model_folders_resolve_against_the_spec(tmp_path):
    (tmp_path / "task.yaml").write_text("prompts:\n  - {clean: [1, 2, 3], answers: [4]}\n")
    (tmp_path / "my-model").mkdir()
    spec = StudySpec.from_dict(_bad("out", models=["zoo:tiny-attn", "./my-model", "gpt2-small"],
                                    tasks=[{"file": "task.yaml", "params": {"prepend_bos": False}}]), base_dir=tmp_path)
    assert spec.models == ["zoo:tiny-attn", str((tmp_path / "my-model").resolve()), "gpt2-small"]
    assert spec.tasks[0].file == str((tmp_path / "task.yaml").resolve()) and spec.tasks[0].label == "task"
    assert spec.output_dir == tmp_path / "out"
    with pytest.raises(SpecError, match=r"tasks\[0\].file: no task file at .*relative to the spec file"):
        StudySpec.from_dict(_bad("out", tasks=[{"file": "missing.yaml"}]), base_dir=tmp_path)
    with pytest.raises(SpecError, match=r"a task file takes only \['prepend_bos'\] from the spec, not 'n_prompts'"):
        StudySpec.from_dict(_bad("out", tasks=[{"file": "task.yaml", "params": {"n_prompts": 3}}]), base_dir=tmp_path)
