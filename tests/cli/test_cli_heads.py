from __future__ import annotations

import pandas as pd
import pytest

from circuitkit.cli import main
from circuitkit.heads.toy import TOY_QUESTION, TOY_VALUES, toy_haystack


@pytest.fixture(scope="module")
def toy_zoo(tmp_path_factory, toy_model):
    from circuitkit.models.zoo_store import ZooCard, config_to_json, save_zoo_model

    root = tmp_path_factory.mktemp("zoo")
    card = ZooCard("toy-retrieval", "hand-wired retrieval head a1.h0", config_to_json(toy_model.cfg),
                   {"builder": "needle", "params": {"values": list(TOY_VALUES), "question": TOY_QUESTION,
                                                     "haystack": toy_haystack(), "context_lengths": [24]}},
                   construction="hand-built")
    save_zoo_model(toy_model, card, toy_model.tokenizer, root=root)
    return root


def test_cli_retrieval_and_score(toy_zoo, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIRCUITKIT_ZOO_PATH", str(toy_zoo))
    hay = tmp_path / "hay.txt"
    hay.write_text(toy_haystack())
    out, html = tmp_path / "scores.csv", tmp_path / "heads.html"
    code = main(["heads", "retrieval", "zoo:toy-retrieval", "--lengths", "24", "40", "--depths", "0", "0.5", "1",
                 "--values", *TOY_VALUES, "--question", TOY_QUESTION, "--haystack", str(hay),
                 "--out", str(out), "--html", str(html), "--causal", "1", "--n-random", "2", "--no-progress"])
    assert code == 0
    frame = pd.read_csv(out)
    assert frame.set_index("component")["score"]["a1.h0"] == pytest.approx(1.0)
    assert frame["score"].sum() == pytest.approx(1.0)
    assert "plotly" in html.read_text().lower()
    printed = capsys.readouterr().out
    assert "retrieval heads (> 0.1): ['a1.h0']" in printed and "top-1" in printed

    # a zoo needle model's card supplies values, question and haystack
    assert main(["heads", "retrieval", "zoo:toy-retrieval", "--lengths", "30", "--depths", "0.5", "--out", str(out),
                 "--no-progress"]) == 0
    assert pd.read_csv(out).set_index("component")["score"]["a1.h0"] == pytest.approx(1.0)

    assert main(["heads", "score", "zoo:toy-retrieval", "--kind", "induction", "--out", str(out), "--no-progress"]) == 0
    top = pd.read_csv(out).sort_values("score").iloc[-1]
    assert top["component"] == "a1.h0"


def test_cli_errors_are_one_line(toy_zoo, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIRCUITKIT_ZOO_PATH", str(toy_zoo))
    code = main(["heads", "retrieval", "zoo:toy-retrieval", "--lengths", "120", "--values", *TOY_VALUES,
                 "--question", TOY_QUESTION, "--haystack", str(tmp_path / "missing.txt")])
    assert code == 2 and "no haystack file" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = main(["heads", "retrieval", "zoo:toy-retrieval", "--haystack", str(empty)])
    assert code == 2 and "haystack is empty" in capsys.readouterr().err


def test_causal_check_explains_its_gap_and_says_when_draws_repeat(capsys):
    assert main(["heads", "retrieval", "zoo:retrieval-handbuilt", "--causal", "1", "--n-random", "10",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    header = next(row for row in out.splitlines() if row.strip().startswith("condition"))
    assert "gap" not in header  # no unexplained constant column
    line = next(row for row in out.splitlines() if row.startswith("gap "))
    assert "= random-mean accuracy" in line and "- top-1 accuracy" in line and "so some repeat" in line


def test_needle_grid_compares_the_full_and_the_razor_cache(tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "grid.csv"
    assert main(["heads", "needle-grid", "zoo:retrieval-handbuilt", "--lengths", "128", "--depths", "0", "0.5",
                 "--window", "16", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "retrieval heads (> 0.1): ['a1.h0']" in text and "razor: accuracy 1.000, KV cache kept 26.2%" in text
    table = pd.read_csv(out)
    assert set(table.policy) == {"full cache", "razor"} and (table.accuracy == 1).all()
    assert main(["heads", "needle-grid", "zoo:retrieval-handbuilt", "--keep", "a0.h1", "--lengths", "128",
                 "--depths", "0", "--window", "16", "--no-progress"]) == 0
    assert "razor: accuracy 0.000" in capsys.readouterr().out
