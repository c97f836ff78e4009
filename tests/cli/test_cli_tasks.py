"""A researcher's own model and task from the command line: a local Hugging Face GPT-2 folder
with a BOS-less BPE tokenizer, builder parameters (--task-arg), --no-prepend-bos, and task files
(YAML text prompts, safetensors token tensors) through patch, discover, heads and a study."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
import yaml
from model_factory import bosless_bpe_tokenizer, save_hf_gpt2

from circuitkit import activation_patching, discover, head_scores, ioi, load_circuit, load_model
from circuitkit.cli import main
from circuitkit.cli.common import parse_task_args
from circuitkit.tasks.files import load_task_file

IOI_ENTRIES = [
    ("When Mary and John went to the store, John gave a drink to", "When Alice and Bob went to the store, Tom gave a drink to", " Mary", " John"),
    ("When Sarah and Paul went to the park, Paul gave a book to", "When Emma and Jack went to the park, Lisa gave a book to", " Sarah", " Paul"),
    ("When Kate and Mark went to the house, Kate gave a ring to", "When Ruth and Carl went to the house, Adam gave a ring to", " Mark", " Kate"),
    ("When Anna and David went to the office, David gave a key to", "When Helen and Henry went to the office, Jane gave a key to", " Anna", " David"),
]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    tok = bosless_bpe_tokenizer()
    assert tok.bos_token_id is None and tok.eos_token_id is None
    return save_hf_gpt2(tmp_path_factory.mktemp("hf") / "tiny-gpt2-nobos", tok)


@pytest.fixture(scope="module")
def model(gpt2_dir):
    return load_model(gpt2_dir, device="cpu")


@pytest.fixture(scope="module")
def yaml_task(tmp_path_factory):
    path = tmp_path_factory.mktemp("tasks") / "my_ioi.yaml"
    path.write_text(yaml.safe_dump({"name": "my-ioi", "prompts": [
        {"clean": c, "corrupted": x, "answers": [a], "wrong_answers": [w]} for c, x, a, w in IOI_ENTRIES]}))
    return path


def _frame(path):
    return pd.read_csv(path).sort_values("component").reset_index(drop=True)


def test_a_bos_less_tokenizer_is_refused_with_the_flag_that_fixes_it(gpt2_dir, tmp_path, capsys):
    assert main(["patch", str(gpt2_dir), "--task", "ioi", "--n-prompts", "3", "--out", str(tmp_path / "s.csv"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "neither a BOS nor an EOS token" in err and "--no-prepend-bos" in err
    assert not (tmp_path / "s.csv").exists()


def test_patch_with_builder_parameters_equals_the_api(gpt2_dir, model, tmp_path):
    out = tmp_path / "s.csv"
    names = ["Mary", "John", "Alice", "Bob", "Tom", "James"]
    assert main(["patch", str(gpt2_dir), "--task", "ioi", "--no-prepend-bos", "--n-prompts", "4",
                 "--task-arg", "seed=3", "--task-arg", f"names=[{', '.join(names)}]", "--component", "head_out",
                 "--out", str(out), "--no-progress"]) == 0
    task = ioi(model, n_prompts=4, seed=3, names=names, prepend_bos=False)
    assert all(any(n in p for n in names) for p in task.prompts)
    assert task.prompts != ioi(model, n_prompts=4, prepend_bos=False).prompts  # the parameters mattered
    expected = activation_patching(model, task, "head_out", progress=False).to_frame()
    expected = expected.sort_values("component").reset_index(drop=True)
    got = _frame(out)
    assert list(got["component"]) == list(expected["component"])
    torch.testing.assert_close(torch.tensor(got["score"].values), torch.tensor(expected["score"].values),
                               atol=1e-5, rtol=0)


def test_discover_and_heads_on_a_yaml_task_file_equal_the_api(gpt2_dir, model, yaml_task, tmp_path):
    task = load_task_file(yaml_task, model)
    assert task.name == "my-ioi" and len(task) == 4 and task.meta["prepend_bos"] is False
    assert task.clean[0].tolist() == model.tokenizer.encode(IOI_ENTRIES[0][0])  # no BOS for a BOS-less tokenizer
    out = tmp_path / "c.json"
    assert main(["discover", str(gpt2_dir), "--task", str(yaml_task), "--method", "eap", "--top-k", "6",
                 "--out", str(out), "--no-progress"]) == 0
    expected = discover(model, task, "eap", top_k=6)
    assert load_circuit(out).edges == expected.edges and expected.edges

    heads_out = tmp_path / "h.csv"
    assert main(["heads", "score", str(gpt2_dir), "--kind", "previous_token", "--task", str(yaml_task),
                 "--out", str(heads_out), "--no-progress"]) == 0
    scores = head_scores(model, task, "previous_token").to_frame().sort_values("component").reset_index(drop=True)
    torch.testing.assert_close(torch.tensor(_frame(heads_out)["score"].values), torch.tensor(scores["score"].values),
                               atol=1e-6, rtol=0)


def test_heads_on_random_tokens_and_needle_prompts_without_bos(gpt2_dir, tmp_path, capsys):
    assert main(["heads", "score", str(gpt2_dir), "--kind", "induction", "--n-prompts", "2", "--seq-len", "6",
                 "--no-prepend-bos", "--out", str(tmp_path / "i.csv"), "--no-progress"]) == 0
    assert len(pd.read_csv(tmp_path / "i.csv")) == 8  # 2 layers x 4 heads
    haystack = "The store is open. " * 40
    assert main(["heads", "retrieval", str(gpt2_dir), "--no-prepend-bos", "--lengths", "48", "--depths", "0.5",
                 "--task-arg", f"haystack={haystack}", "--values", "Mary", "John", "--min-recall", "-1",
                 "--out", str(tmp_path / "r.csv"), "--no-progress"]) == 0
    assert len(pd.read_csv(tmp_path / "r.csv")) == 8
    assert "kept" in capsys.readouterr().out


def test_patch_on_a_safetensors_token_task(gpt2_dir, model, tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    v = model.cfg.d_vocab
    tensors = {"clean": torch.randint(0, v, (3, 7), generator=g), "corrupted": torch.randint(0, v, (3, 7), generator=g),
               "answers": torch.randint(0, v, (3, 1), generator=g), "wrong_answers": torch.randint(0, v, (3, 1), generator=g)}
    path = tmp_path / "tokens.safetensors"
    save_file(tensors, str(path), metadata={"name": "random-tokens", "metric": "logit_diff"})
    out = tmp_path / "s.csv"
    assert main(["patch", str(gpt2_dir), "--task", str(path), "--component", "resid_pre", "--out", str(out),
                 "--no-progress"]) == 0
    task = load_task_file(path)
    assert task.name == "random-tokens" and torch.equal(task.clean, tensors["clean"])
    expected = activation_patching(model, task, "resid_pre", progress=False).to_frame()
    expected = expected.sort_values("component").reset_index(drop=True)
    torch.testing.assert_close(torch.tensor(_frame(out)["score"].values), torch.tensor(expected["score"].values),
                               atol=1e-5, rtol=0)


def test_study_on_a_relative_hf_folder_and_a_task_file(gpt2_dir, yaml_task, tmp_path, monkeypatch):
    from circuitkit.studies import load_results

    study = tmp_path / "study"
    study.mkdir()
    shutil.copytree(gpt2_dir, study / "tiny-gpt2-nobos")
    shutil.copy(yaml_task, study / "task.yaml")
    (study / "spec.yaml").write_text(yaml.safe_dump({
        "models": ["./tiny-gpt2-nobos"],
        "tasks": [{"file": "task.yaml"}, {"name": "ioi", "params": {"n_prompts": 4, "prepend_bos": False}}],
        "ablations": ["mean"], "targets": {"head_sets": {"first": ["a0.h0", "a0.h1"]}},
        "output_dir": "out"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths in the spec are relative to the spec, not to the working directory
    assert main(["study", "run", str(study / "spec.yaml"), "--no-progress"]) == 0
    results = load_results(study / "out")
    assert sorted(results["task"]) == ["ioi", "task"] and results["recovered"].notna().all()
    # a model folder inside the study's folder is named relative to the spec, so moving the study is no change
    assert results["model"].iloc[0] == "./tiny-gpt2-nobos"


@pytest.mark.parametrize("argv, match", [
    (["--task", "ioi", "--task-arg", "nme=3"], "task 'ioi' takes no parameter 'nme' .did you mean 'names'"),
    (["--task", "ioi", "--task-arg", "seed"], "--task-arg 'seed': expected KEY=VALUE"),
    (["--task", "ioi", "--task-arg", "n_prompts=2", "--n-prompts", "3"], "give the prompt count once"),
    (["--task", "ioi", "--n-prompts", "0", "--no-prepend-bos"], "ioi: n_prompts is 0; ask for at least 1 prompt"),
])
def test_bad_task_arguments_are_named(gpt2_dir, tmp_path, capsys, argv, match):
    assert main(["discover", str(gpt2_dir), *argv, "--top-k", "2", "--out", str(tmp_path / "c.json")]) == 2
    import re

    assert re.search(match, capsys.readouterr().err)


def test_bad_task_files_are_named(gpt2_dir, model, tmp_path, capsys):
    from circuitkit.tasks import TaskError

    pickle_like = tmp_path / "task.pkl"
    pickle_like.write_bytes(b"\x80\x04K\x01.")
    assert main(["patch", str(gpt2_dir), "--task", str(pickle_like), "--out", str(tmp_path / "s.csv")]) == 2
    assert "without a task-file suffix" in capsys.readouterr().err
    two_tokens = tmp_path / "t.yaml"
    two_tokens.write_text(yaml.safe_dump({"prompts": [{"clean": IOI_ENTRIES[0][0], "answers": [" Mary John"]}]}))
    with pytest.raises(TaskError, match=r"prompts\[0\].answers\[0\]: ' Mary John' is 2 tokens .* an answer must be one token"):
        load_task_file(two_tokens, model)
    mismatched = tmp_path / "m.json"
    mismatched.write_text('{"prompts": [{"clean": [1, 2, 3], "corrupted": [1, 2], "answers": [4]}]}')
    with pytest.raises(TaskError, match=r"prompts\[0\]: clean has 3 tokens, corrupted 2"):
        load_task_file(mismatched)
    typo = tmp_path / "k.json"
    typo.write_text('{"prompts": [{"clean": [1, 2, 3], "answer": [4]}]}')
    with pytest.raises(TaskError, match=r"prompts\[0\]: unknown key 'answer'"):
        load_task_file(typo)
    outside = tmp_path / "o.json"
    outside.write_text(json.dumps({"prompts": [{"clean": [1, 2, 3], "answers": [model.cfg.d_vocab + 1]}]}))
    from circuitkit.tasks import OutOfVocabularyError

    with pytest.raises(OutOfVocabularyError, match="answer of prompt 0 has token id"):
        load_task_file(outside, model)
    assert main(["patch", str(gpt2_dir), "--task", str(outside), "--out", str(tmp_path / "s.csv")]) == 2
    assert "outside model" in capsys.readouterr().err


def test_task_argument_values_are_read_as_yaml_safely():
    assert parse_task_args(["n_prompts=8", "names=[Ann, Bob]", "prepend_bos=false", "order=ABBA", "x=1.5"]) == {
        "n_prompts": 8, "names": ["Ann", "Bob"], "prepend_bos": False, "order": "ABBA", "x": 1.5}
    with pytest.raises(Exception, match="not valid YAML|could not determine a constructor"):
        parse_task_args(["x=!!python/object/apply:os.system [echo hi]"])
