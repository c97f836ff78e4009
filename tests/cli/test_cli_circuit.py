# ruff: noqa: F811  (pytest fixtures imported from circuit_fixtures are parameters here)
import json

import pytest
from circuit_fixtures import exact_scores, known_model, known_task  # noqa: F401  (fixtures)

from circuitkit.circuit import load_circuit
from circuitkit.circuit.io import to_mib
from circuitkit.cli import main


@pytest.fixture
def zoo(tmp_path, monkeypatch, known_model, word_tokenizer):
    from circuitkit.models.zoo_store import config_to_json
    from circuitkit.zoo import ZooCard, save_zoo_model

    card = ZooCard(name="dead-heads", description="two heads write nothing", config=config_to_json(known_model.cfg),
                   task={"builder": "induction", "params": {"n_prompts": 8, "seq_len": 6}, "metric": "logit_diff"},
                   construction="hand-built", circuit={"nodes": ["a0.h0", "a1.h1"], "edges": []})
    save_zoo_model(known_model, card, word_tokenizer, root=tmp_path / "zoo")
    monkeypatch.setenv("CIRCUITKIT_ZOO_PATH", str(tmp_path / "zoo"))
    return tmp_path


def test_discover_and_export(zoo, capsys):
    out, html = zoo / "c.json", zoo / "c.html"
    assert main(["discover", "zoo:dead-heads", "--method", "acdc", "--threshold", "1e-4",
                 "--ablation", "corrupted", "--out", str(out), "--html", str(html), "--no-progress"]) == 0
    assert "faithfulness" in capsys.readouterr().out
    circuit = load_circuit(out)
    assert circuit.nodes == ["input", "a0.h0", "a1.h1", "logits"] and circuit.meta["discovery"] == "acdc"
    assert html.read_text().lower().startswith("<!doctype html>")
    mib = zoo / "c.mib.json"
    assert main(["export", str(out), "--to", "mib", "--out", str(mib)]) == 0
    assert set(json.loads(mib.read_text())) == {"cfg", "nodes", "edges"} and load_circuit(mib) == circuit
    act = zoo / "act.json"
    assert main(["discover", "zoo:dead-heads", "--method", "eap-ig", "--interpolate", "activations",
                 "--steps", "2", "--top-k", "4", "--out", str(act), "--no-progress"]) == 0
    assert load_circuit(act).meta["interpolate"] == "activations"


def test_export_chooses_mibs_sign_and_scores(zoo, capsys):
    out = zoo / "c.json"
    assert main(["discover", "zoo:dead-heads", "--method", "eap", "--top-k", "3", "--out", str(out), "--no-progress"]) == 0
    circuit = load_circuit(out)
    for flags, options in (([], {}), (["--sign", "circuitkit", "--scores", "circuit"], {"sign": "circuitkit", "scores": "circuit"})):
        dst = zoo / f"m{len(flags)}.json"
        assert main(["export", str(out), "--to", "mib", "--out", str(dst), *flags]) == 0
        assert json.loads(dst.read_text()) == json.loads(json.dumps(to_mib(circuit, **options)))
    default, chosen = (json.loads((zoo / f"m{n}.json").read_text())["edges"] for n in (0, 4))
    assert any(default[e]["score"] != chosen[e]["score"] for e in default)  # the flags change what is written
    assert main(["export", str(out), "--to", "graphml", "--out", str(zoo / "c.graphml"), "--sign", "mib"]) == 2
    assert "--sign only apply to --to mib" in capsys.readouterr().err and not (zoo / "c.graphml").exists()


def test_cli_errors_write_nothing(zoo, capsys):
    bad = zoo / "bad.json"
    bad.write_text(json.dumps({"format": "circuitkit-circuit", "format_version": 7}))
    assert main(["export", str(bad), "--to", "gexf", "--out", str(zoo / "x.gexf")]) == 2
    assert "format_version 7" in capsys.readouterr().err and not (zoo / "x.gexf").exists()
    assert main(["discover", "zoo:dead-heads", "--method", "acdc", "--out", str(zoo / "no" / "c.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["discover", "zoo:dead-heads", "--top-k", "3", "--threshold", "0.1", "--out", "c.json"])
    with pytest.raises(SystemExit):
        main(["discover", "zoo:dead-heads", "--interpolate", "outputs", "--out", "c.json"])


@pytest.mark.parametrize("arch", ["neox", "gemma2"])
def test_discover_on_local_hugging_face_folders(tmp_path, word_tokenizer, capsys, arch):
    """A Pythia-shaped (parallel blocks) and a Gemma-2-shaped (post-norm, soft-capped) random model
    saved as Hugging Face folders: discover runs end to end, and the circuit's edges are the
    family's (no same-layer head feeds an MLP in a parallel block)."""
    from model_factory import save_hf_folder

    _, folder = save_hf_folder(tmp_path, arch, word_tokenizer)
    out = tmp_path / "c.json"
    assert main(["discover", str(folder), "--task", "induction", "--method", "eap-ig",
                 "--top-k", "12", "--out", str(out), "--no-progress"]) == 0
    assert "faithfulness" in capsys.readouterr().out
    circuit = load_circuit(out)
    assert 0 < len(circuit.edges) <= 12  # the top 12, less any left without a route to the logits
    if arch == "neox":
        from circuitkit import names
        for edge in circuit.all_edges:
            e = names.parse_edge(edge)
            child, parent = names.parse_node(e.child), names.parse_node(e.parent)
            assert not (child.kind == "mlp" and parent.kind == "head" and parent.layer == child.layer), edge


def test_api_defaults_and_the_cli_give_the_same_circuit(tmp_path):
    """One default ablation: scoring with eap's defaults and pruning with smallest_faithful's
    gives the circuit `circuitkit discover` gives (the README's Circuits block relies on it)."""
    from circuitkit import cap_by_route, discover, eap, load_model, smallest_faithful, zoo_task
    from circuitkit.circuit import load_circuit

    out = tmp_path / "c.json"
    assert main(["discover", "zoo:induction-handbuilt", "--method", "eap", "--out", str(out), "--no-progress"]) == 0
    model = load_model("zoo:induction-handbuilt")
    task = zoo_task("induction-handbuilt", model)
    by_hand = smallest_faithful(model, task, cap_by_route(eap(model, task, progress=False)), target=0.9)
    assert load_circuit(out).edges == by_hand.edges == discover(model, task, "eap").edges
    assert 0 < len(by_hand.edges) < 20


def test_discover_says_when_top_k_edges_were_dropped_as_dangling(tmp_path, capsys):
    from circuitkit.circuit import load_circuit

    out = tmp_path / "c.json"
    assert main(["discover", "zoo:induction-handbuilt", "--method", "eap", "--top-k", "10", "--out", str(out),
                 "--no-progress"]) == 0
    kept = len(load_circuit(out).edges)
    text = capsys.readouterr().out
    assert kept < 10 and f"of the top 10 edges, {10 - kept} lie on no input -> logits path" in text
