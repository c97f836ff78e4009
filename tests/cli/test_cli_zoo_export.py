"""`circuitkit zoo export NAME DIR`: a Hugging Face folder for models with a LayerNorm, a one-line refusal
(exit 2, nothing written) for the others and for an existing non-empty DIR without --force."""

import json

from circuitkit.cli import build_parser, main


def test_export_writes_a_hugging_face_folder(tmp_path, capsys):
    out = tmp_path / "induction"
    assert main(["zoo", "export", "induction-trained", str(out)]) == 0
    assert "GPT2LMHeadModel" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    assert json.loads((out / "circuitkit_zoo.json").read_text())["zoo_name"] == "induction-trained"
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()

    assert main(["zoo", "export", "induction-trained", str(out)]) == 2  # exists, not empty
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and "Traceback" not in err
    assert main(["zoo", "export", "needle-trained", str(out), "--force"]) == 0
    assert "GPTNeoXForCausalLM" in capsys.readouterr().out
    assert json.loads((out / "circuitkit_zoo.json").read_text())["zoo_name"] == "needle-trained"


def test_export_refuses_a_model_without_layernorm(tmp_path, capsys):
    out = tmp_path / "handbuilt"
    assert main(["zoo", "export", "induction-handbuilt", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot export 'induction-handbuilt'" in err and "no LayerNorm" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_help_names_every_argument():
    zoo = build_parser()._subparsers._group_actions[0].choices["zoo"]
    export = zoo._subparsers._group_actions[0].choices["export"]
    for action in export._actions:
        assert action.help, action.dest
