"""``circuitkit patch``: the table and heatmap it writes equal the API's scores."""

import pytest

from circuitkit.patching import activation_patching


def test_cli_patch_writes_table_and_heatmap(tmp_path, word_tokenizer, capsys):
    import pandas as pd
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuitkit.cli import main
    from circuitkit.models.loading import load_model
    from circuitkit.tasks.builders import ioi

    model_dir = tmp_path / "model"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(word_tokenizer), n_positions=32, n_embd=16, n_layer=2,
                               n_head=2)).save_pretrained(model_dir)
    word_tokenizer.save_pretrained(model_dir)
    out, html = tmp_path / "scores.csv", tmp_path / "map.html"
    assert main(["patch", str(model_dir), "--task", "ioi", "--n-prompts", "3", "--component", "head_out",
                 "--out", str(out), "--html", str(html), "--no-progress"]) == 0
    frame = pd.read_csv(out)
    assert list(frame["component"]) == ["a0.h0", "a0.h1", "a1.h0", "a1.h1"]
    model = load_model(str(model_dir))
    expected = activation_patching(model, ioi(model, n_prompts=3), "head_out", progress=False)
    assert frame["score"].tolist() == pytest.approx(expected.values.tolist(), abs=1e-5)
    assert "plotly" in html.read_text()
    assert "4 scores (head_out" in capsys.readouterr().out
    assert main(["patch", str(model_dir), "--out", str(tmp_path / "x.txt")]) == 2
    assert "--out must end in .csv or .parquet" in capsys.readouterr().err
    assert not (tmp_path / "x.txt").exists()


