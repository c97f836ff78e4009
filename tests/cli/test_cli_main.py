import subprocess
import sys

import pytest

from circuitkit.cli import build_parser, main


def test_help_on_every_command(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert "info" in commands and "zoo" in commands
    for name, sub in commands.items():
        help_text = sub.format_help()
        assert name in help_text


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "circuitkit.cli", "--help"], capture_output=True, text=True, check=True)
    assert "COMMAND" in out.stdout


def test_info_on_local_model(tmp_path, word_tokenizer, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=len(word_tokenizer), n_positions=32, n_embd=16, n_layer=1,
                               n_head=2)).save_pretrained(tmp_path)
    word_tokenizer.save_pretrained(tmp_path)
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "n_layers" in out and "blocks.0.attn.hook_z" in out


def test_info_error_is_one_line(capsys):
    assert main(["info", "zoo:does-not-exist"]) == 2
    err = capsys.readouterr().err
    assert "no zoo model named 'does-not-exist'" in err and "Traceback" not in err


def test_version_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "circuitkit" in capsys.readouterr().out
