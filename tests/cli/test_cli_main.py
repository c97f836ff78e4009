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


HEAVY = ("torch", "transformer_lens", "sae_lens", "plotly", "transformers")


def _modules_after(argv: list[str]) -> set[str]:
    """The heavy modules imported by running ``circuitkit ARGV`` in a fresh interpreter."""
    code = ("import sys\nfrom circuitkit.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("HEAVY="))
    return {m for m in line[len("HEAVY="):].split(",") if m}


@pytest.mark.parametrize("argv", [["--help"], ["zoo", "list"], ["zoo", "show", "induction-handbuilt"]])
def test_help_and_light_commands_import_no_heavy_library(argv):
    assert _modules_after(argv) == set()


def test_a_command_that_runs_a_model_does_import_them():
    # the check above can fail: building `patch`'s parser imports the patching engine (torch)
    assert "torch" in _modules_after(["patch", "--help"])


def _options(parser) -> dict[str, object]:
    return {opt: action for action in parser._actions for opt in action.option_strings}


def _all_parsers(parser, prefix=""):
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for name, child in action.choices.items():
                yield f"{prefix}{name}", child
                yield from _all_parsers(child, f"{prefix}{name} ")


def test_one_grammar_across_commands():
    parsers = dict(_all_parsers(build_parser()))
    runs_a_model = ["info", "patch", "discover", "heads retrieval", "heads score", "sae train", "sae report", "sae card"]
    for name in runs_a_model:
        positional = [a.dest for a in parsers[name]._actions if not a.option_strings and a.dest != "help"]
        assert positional[0] == "model", name  # MODEL first, positionally, everywhere
        assert "--model" not in _options(parsers[name]), name
    for name, p in parsers.items():
        opts = _options(p)
        for old in ("--quiet", "--prompts", "--batch", "--target"):
            assert old not in opts, f"{name} still spells {old}"
        if "--n-prompts" in opts or "--task" in opts:
            assert {"--task", "--task-arg", "--prepend-bos", "--no-prepend-bos"} <= set(opts) or name.startswith("sae")


def test_defaults_are_shown_in_help():
    parsers = dict(_all_parsers(build_parser()))

    def text(name):
        return " ".join(parsers[name].format_help().split())

    assert "(default: head_out)" in text("patch") and "(default: denoise)" in text("patch")
    for default in ("(default: 0.9)", "(default: mean)", "(default: eap-ig)", "(default: cpu)"):
        assert default in text("discover")
    assert "(default: 16)" in text("heads score") and "(default: 0.1)" in text("heads retrieval")


def test_sae_help_advertises_only_its_subcommands(capsys):
    parsers = dict(_all_parsers(build_parser()))
    subcommands = {n.split(" ", 1)[1] for n in parsers if n.startswith("sae ")}
    assert subcommands == {"train", "report", "card", "circuit"}
    help_text = parsers["sae"].format_help()
    assert "heads" not in help_text.split("options:")[0].split("positional arguments:")[1]


def test_old_spellings_still_work_with_a_notice(tmp_path, capsys):
    from circuitkit.cli.entry import _rewrite_deprecated

    argv = _rewrite_deprecated(["discover", "--model", "zoo:x", "--target", "0.8", "--quiet", "--out", "c.json"])
    assert argv == ["discover", "zoo:x", "--faithfulness", "0.8", "--no-progress", "--out", "c.json"]
    assert _rewrite_deprecated(["patch", "m", "--target=q"]) == ["patch", "m", "--component=q"]
    err = capsys.readouterr().err
    assert "--model is deprecated; give MODEL first" in err and "--target is deprecated; use --component" in err


def test_the_cli_choices_are_the_libraries_own():
    from circuitkit.ablation.kinds import ABLATION_KINDS
    from circuitkit.patching.activation import TARGETS

    parsers = dict(_all_parsers(build_parser()))
    assert list(_options(parsers["patch"])["--component"].choices) == list(TARGETS)
    assert list(_options(parsers["discover"])["--ablation"].choices) == list(ABLATION_KINDS)


def test_every_option_has_help_and_states_its_default_once():
    """Across every command: an argument without help would leave a user guessing; a default
    written into the help text and added again by the formatter reads "(default: x) (default: x)"."""
    import argparse

    from circuitkit.cli.entry import build_parser

    missing, repeated = [], []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, [*path, name])
                continue
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            where = f"{' '.join(path)} {action.option_strings or action.dest}"
            if not action.help or action.help.strip() == "(default: %(default)s)":
                missing.append(where)
            elif parser._get_formatter()._expand_help(action).count("(default:") > 1:
                repeated.append(where)

    walk(build_parser(None), ["circuitkit"])
    assert not missing, f"arguments without help: {missing}"
    assert not repeated, f"defaults stated twice: {repeated}"
