"""`circuitkit sae train | report | card` on a tiny model placed on the zoo path."""

from __future__ import annotations

import json

import pytest

from circuitkit.cli import main


@pytest.fixture
def zoo_with_tiny(tmp_path, monkeypatch, tiny_model, word_tokenizer):
    from circuitkit.models.zoo_store import config_to_json
    from circuitkit.zoo import ZooCard, save_zoo_model

    monkeypatch.setenv("CIRCUITKIT_ZOO_PATH", str(tmp_path / "zoo"))
    card = ZooCard(name="tiny-sae-test", description="random weights for SAE CLI tests",
                   config=config_to_json(tiny_model.cfg), task={"builder": "ioi", "params": {"n_prompts": 4}})
    save_zoo_model(tiny_model, card, word_tokenizer, root=tmp_path / "zoo")
    text = tmp_path / "corpus.txt"
    text.write_text(" ".join(["When Mary and John went to the store , John gave a book to Mary ."] * 60))
    return tmp_path, text


def test_train_report_card(zoo_with_tiny, capsys):
    tmp_path, text = zoo_with_tiny
    out = tmp_path / "sae"
    assert main(["sae", "train", "zoo:tiny-sae-test", "--hook", "blocks.0.hook_resid_post", "--out", str(out),
                 "--text", str(text), "--arch", "topk", "--k", "4", "--d-sae", "32", "--steps", "10",
                 "--batch-tokens", "64", "--context", "16", "--no-progress"]) == 0
    assert "saved to" in capsys.readouterr().out
    assert (out / "sae_weights.safetensors").exists()
    assert main(["sae", "report", "zoo:tiny-sae-test", str(out), "--text", str(text), "--n-prompts", "4",
                 "--context", "16", "--json"]) == 0
    stdout = capsys.readouterr().out
    report = json.loads(stdout[stdout.index("{"):])  # TransformerLens may print a dtype notice first
    assert report["hook_name"] == "blocks.0.hook_resid_post" and report["l0"] <= 4 and report["n_tokens"] == 64
    page = tmp_path / "card.html"
    assert main(["sae", "card", "zoo:tiny-sae-test", str(out), "3", "--text", str(text), "--n-prompts", "4",
                 "--context", "16", "--html", str(page)]) == 0
    assert "f0.resid_post.3" in capsys.readouterr().out and "f0.resid_post.3" in page.read_text()


def test_cli_errors_are_one_line(zoo_with_tiny, capsys):
    tmp_path, text = zoo_with_tiny
    assert main(["sae", "train", "zoo:tiny-sae-test", "--hook", "blocks.0.hook_resid_psot", "--out",
                 str(tmp_path / "x"), "--text", str(text)]) == 2
    err = capsys.readouterr().err
    assert "no hook point 'blocks.0.hook_resid_psot'" in err and "blocks.0.hook_resid_post" in err
    assert main(["sae", "report", "zoo:tiny-sae-test", str(tmp_path / "missing")]) == 2
    assert "no SAE directory" in capsys.readouterr().err


@pytest.mark.parametrize("content, match", [
    (b"\x7fELF\x02\x01\x01\x00\x00\x00" * 20, r"is a binary file, not text \(a NUL byte at offset 7\)"),
    ("caf\u00e9 ".encode("latin-1") * 20, r"is not UTF-8 text \(byte 0xe9 at offset 3\)"),
])
def test_train_refuses_a_binary_text_file_before_loading(zoo_with_tiny, capsys, content, match):
    import re

    tmp_path, _ = zoo_with_tiny
    binary = tmp_path / "model.bin"
    binary.write_bytes(content)
    out = tmp_path / "sae"
    assert main(["sae", "train", "zoo:tiny-sae-test", "--out", str(out), "--text", str(binary), "--steps", "1",
                 "--no-progress"]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not out.exists()
    from circuitkit.sae.train import training_tokens

    with pytest.raises(ValueError, match=match):  # the API refuses it too
        training_tokens(None, binary)


def test_sae_circuit_on_the_handbuilt_models_shipped_saes(tmp_path, capsys):
    from pathlib import Path

    from circuitkit.circuit import load_circuit

    saes = Path(__file__).resolve().parents[2] / "data" / "zoo" / "induction-handbuilt" / "saes"
    dirs = [str(saes / h) for h in ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post")]
    out, page = tmp_path / "fc.json", tmp_path / "fc.html"
    assert main(["sae", "circuit", "zoo:induction-handbuilt", *dirs, "--n-prompts", "4", "--steps", "4", "--top", "40",
                 "--out", str(out), "--html", str(page), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "faithfulness" in text and "error share" in text and f"wrote {page}" in text
    circuit = load_circuit(out)
    assert any(n.startswith("f1.resid_post.") for n in circuit.nodes)
    html = page.read_text()  # hovering a feature shows its card
    assert "top activations" in html and "promotes" in html and "f1.resid_post." in html
    # a --card-text that cannot be read fails before any work
    assert main(["sae", "circuit", "zoo:induction-handbuilt", *dirs, "--html", str(tmp_path / "x.html"),
                 "--card-text", str(tmp_path / "missing.txt")]) != 0
    assert "missing.txt" in capsys.readouterr().err and not (tmp_path / "x.html").exists()
    # an SAE for another hook width fails before any work, naming the hook
    assert main(["sae", "circuit", "zoo:tiny-lm", dirs[0], "--n-prompts", "4"]) != 0
    assert "d_in=125" in capsys.readouterr().err


def test_sae_circuit_linear_on_the_attention_only_handbuilt_model(tmp_path, capsys):
    from pathlib import Path

    from circuitkit.circuit import load_circuit

    saes = Path(__file__).resolve().parents[2] / "data" / "zoo" / "induction-handbuilt" / "saes"
    dirs = [str(saes / h) for h in ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post")]
    out = tmp_path / "fc.json"
    assert main(["sae", "circuit", "zoo:induction-handbuilt", *dirs, "--method", "linear", "--n-prompts", "2",
                 "--top", "20", "--out", str(out), "--no-progress"]) == 0
    assert "faithfulness" in capsys.readouterr().out
    assert load_circuit(out).method == "feature-linear"


def test_sae_circuit_builds_its_sites_and_baseline_once(tmp_path, capsys, monkeypatch):
    """Discovery, evaluation and the feature cards share one set of sites and one baseline, and the
    printed evaluation equals the API's with that baseline."""
    from pathlib import Path

    import circuitkit as ck
    from circuitkit.circuit import load_circuit
    from circuitkit.sae import graph, splice
    from circuitkit.sae.train import load_sae

    built, baselines = [], []
    real_pairs, real_values = splice._as_pairs, graph.baseline_values

    def counting_pairs(saes):
        built.append(1)
        return real_pairs(saes)

    def counting_values(*args, **kwargs):
        baselines.append(1)
        return real_values(*args, **kwargs)

    monkeypatch.setattr(splice, "_as_pairs", counting_pairs)
    monkeypatch.setattr(graph, "baseline_values", counting_values)
    saes = Path(__file__).resolve().parents[2] / "data" / "zoo" / "induction-handbuilt" / "saes"
    dirs = [str(saes / h) for h in ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre")]
    out = tmp_path / "fc.json"
    assert main(["sae", "circuit", "zoo:induction-handbuilt", *dirs, "--n-prompts", "4", "--steps", "2", "--top", "10",
                 "--out", str(out), "--html", str(tmp_path / "fc.html"), "--no-progress"]) == 0
    assert len(built) == 1 and len(baselines) == 1
    printed = capsys.readouterr().out
    model = ck.load_model("zoo:induction-handbuilt")
    task = ck.zoo_task("induction-handbuilt", model, n_prompts=4)
    result = ck.evaluate_feature_circuit(model, [load_sae(d) for d in dirs], task, load_circuit(out))
    assert f"faithfulness {result.faithfulness:.3f}" in printed


def test_shipped_saes_are_listed_and_load_by_zoo_name(capsys):
    """`zoo list` / `zoo show` say which models ship SAEs; zoo:NAME/HOOK loads the folder they name,
    from the API and every sae command; an unknown hook lists what there is."""
    import json

    import torch

    from circuitkit.sae.train import load_sae
    from circuitkit.zoo import zoo_card

    assert main(["zoo", "list"]) == 0
    listing = capsys.readouterr()
    line = next(row for row in listing.out.splitlines() if row.startswith("induction-handbuilt"))
    assert "3 SAEs" in line and "zoo:NAME/HOOK" in listing.err
    assert main(["zoo", "show", "induction-handbuilt"]) == 0
    shipped = json.loads(capsys.readouterr().out)["saes"]
    assert set(shipped) == {f"zoo:induction-handbuilt/{h}" for h in zoo_card("induction-handbuilt").saes}
    spec = "zoo:induction-handbuilt/blocks.1.hook_resid_pre"
    by_name, by_folder = load_sae(spec), load_sae(shipped[spec])
    torch.testing.assert_close(by_name.W_dec, by_folder.W_dec, rtol=0, atol=0)
    assert main(["sae", "report", "zoo:induction-handbuilt", spec, "--n-prompts", "4", "--json"]) == 0
    capsys.readouterr()
    assert main(["sae", "report", "zoo:induction-handbuilt", "zoo:induction-handbuilt/blocks.9.hook_z"]) == 2
    err = capsys.readouterr().err
    assert "ships no SAE for 'blocks.9.hook_z'" in err and spec in err and "Traceback" not in err


def test_sae_circuit_says_when_its_top_nodes_cannot_be_faithful(capsys):
    assert main(["sae", "circuit", "zoo:induction-handbuilt", "zoo:induction-handbuilt/blocks.1.hook_resid_pre",
                 "--n-prompts", "8", "--top", "3", "--steps", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "reproduce little of the behaviour" in out and "raise --top" in out
