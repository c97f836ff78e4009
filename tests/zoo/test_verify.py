"""``zoo train`` / ``zoo verify``: rebuilding reproduces the shipped files, verify re-derives the
recorded figures, and bad input fails with a clear message."""

import json
import shutil

import pytest
from safetensors.torch import load_file

from circuitkit import load_model, names, zoo_card, zoo_task
from circuitkit.ablation.nodes import ablate
from circuitkit.cli import main
from circuitkit.models.zoo_store import BUNDLED_ZOO, CARD_FILE, TOKENIZER_FILE, WEIGHTS_FILE
from circuitkit.zoo.feature_saes import SAE_DIR
from circuitkit.zoo.recipes import RECIPES, train
from circuitkit.zoo.verification import ablate_each, split_components, verify

HANDBUILT = ("induction-handbuilt", "retrieval-handbuilt")


def files(folder) -> list[str]:
    """Every file under ``folder`` (relative paths, sorted); [] when it does not exist."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", HANDBUILT)
def test_train_reproduces_the_shipped_model_and_verify_passes(name, tmp_path, capsys):
    assert main(["zoo", "train", name, "--out", str(tmp_path), "--no-progress"]) == 0
    built, shipped = tmp_path / name, BUNDLED_ZOO / name
    new, old = load_file(str(built / WEIGHTS_FILE)), load_file(str(shipped / WEIGHTS_FILE))
    assert sorted(new) == sorted(old)
    for key in old:
        assert new[key].equal(old[key]), key
    assert json.loads((built / CARD_FILE).read_text()) == json.loads((shipped / CARD_FILE).read_text())
    assert json.loads((built / TOKENIZER_FILE).read_text()) == json.loads((shipped / TOKENIZER_FILE).read_text())
    # the SAEs the model ships with (induction-handbuilt's analytic ones) are rebuilt exactly
    assert files(built / SAE_DIR) == files(shipped / SAE_DIR)
    for path in files(shipped / SAE_DIR):
        if path.endswith(".json"):
            assert json.loads((built / SAE_DIR / path).read_text()) == json.loads((shipped / SAE_DIR / path).read_text())
        else:
            new, old = load_file(str(built / SAE_DIR / path)), load_file(str(shipped / SAE_DIR / path))
            assert sorted(new) == sorted(old) and all(new[k].equal(old[k]) for k in old), path
    assert (name == "induction-handbuilt") == bool(files(built / SAE_DIR))
    capsys.readouterr()

    assert main(["zoo", "verify", name]) == 0
    out = capsys.readouterr().out
    card = zoo_card(name)
    assert "circuit-only recovery" in out and "circuit-ablated recovery" in out and "PASS" in out
    # the figures printed are the ones recorded in the card when it was built
    assert f"{card.evidence['circuit_only_recovered']:.4f}"[:5] in out
    assert f"{card.evidence['circuit_ablated_recovered']:.4f}"[:5] in out


def test_verify_figures_follow_the_stated_definitions():
    model = load_model("zoo:induction-handbuilt", device="cpu")
    card = zoo_card("induction-handbuilt")
    task = zoo_task(card, model)
    report = verify(model)  # the card is found by the model's name
    inside, outside = split_components(model, card.circuit_nodes)
    assert inside == [names.head(0, 0), names.head(1, 0)] and len(outside) == 6
    assert report.circuit_only == pytest.approx(ablate(model, task, outside, "mean").recovered)
    assert report.circuit_ablated == pytest.approx(ablate(model, task, inside, "mean").recovered)
    assert report.accuracy == pytest.approx(card.accuracy) and report.passed
    # the shared-run fast path equals ablate() set by set
    sets = [[names.head(1, 0)], [names.head(0, 2), names.head(1, 3)], []]
    for components, fast in zip(sets, ablate_each(model, task, sets), strict=True):
        slow = ablate(model, task, components, "mean") if components else None
        assert fast.recovered == pytest.approx(slow.recovered if slow else 1.0, abs=1e-6)
        if slow:
            assert (fast.clean, fast.baseline) == pytest.approx((slow.clean, slow.baseline), abs=1e-6)


@pytest.fixture
def copied_zoo(tmp_path, monkeypatch):
    """A private zoo path holding a copy of the induction model (searched before the bundled zoo)."""
    shutil.copytree(BUNDLED_ZOO / "induction-handbuilt", tmp_path / "induction-handbuilt")
    monkeypatch.setenv("CIRCUITKIT_ZOO_PATH", str(tmp_path))
    return tmp_path / "induction-handbuilt"


def _edit_card(folder, **changes):
    card = json.loads((folder / CARD_FILE).read_text())
    card.update(changes)
    (folder / CARD_FILE).write_text(json.dumps(card))


def test_verify_fails_on_a_wrong_circuit(copied_zoo, capsys):
    _edit_card(copied_zoo, circuit={"nodes": ["input", "a0.h1", "a1.h2", "logits"], "edges": []})
    assert main(["zoo", "verify", "induction-handbuilt"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "circuit-only recovery" in out


def test_verify_checks_edges_when_the_card_lists_them(copied_zoo, capsys):
    from circuitkit.circuit import Circuit
    from circuitkit.circuit.evaluation import evaluate

    model = load_model("zoo:induction-handbuilt")
    card = zoo_card("induction-handbuilt")
    report = verify("induction-handbuilt")
    expected = evaluate(model, zoo_task(card, model), Circuit.from_nodes_edges(card.circuit_nodes, card.circuit_edges))
    assert report.edges_checked and report.edge_faithfulness == pytest.approx(expected.faithfulness, abs=1e-6)
    assert report.edge_ablated_faithfulness == pytest.approx(1 - expected.completeness, abs=1e-6)
    # Right nodes, but the induction head's key no longer reads the previous-token head: not faithful.
    edges = [e for e in card.circuit_edges if e != "a0.h0->a1.h0<k>"]
    _edit_card(copied_zoo, circuit={"nodes": card.circuit_nodes, "edges": edges})
    assert main(["zoo", "verify", "induction-handbuilt"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: edge-circuit faithfulness" in out


def test_bad_input_gives_clear_errors(copied_zoo, tmp_path, capsys):
    with pytest.raises(KeyError, match="no zoo model named 'nope'"):
        verify("nope")
    with pytest.raises(ValueError, match="no recipe for zoo model 'nope'.*induction-handbuilt"):
        train("nope", root=tmp_path)
    assert main(["zoo", "train", "nope", "--out", str(tmp_path)]) == 2
    assert "no recipe" in capsys.readouterr().err
    assert not list(tmp_path.glob("nope*"))  # nothing half-written

    _edit_card(copied_zoo, circuit={"nodes": ["a5.h0"], "edges": []})
    with pytest.raises(ValueError, match=r"circuit nodes \['a5.h0'\] do not exist"):
        verify("induction-handbuilt")
    _edit_card(copied_zoo, circuit={"nodes": ["input", "logits"], "edges": []})
    with pytest.raises(ValueError, match="no heads or MLPs"):
        verify("induction-handbuilt")

    (copied_zoo / CARD_FILE).write_text('{"name": "induction-handbuilt", truncated')
    with pytest.raises(ValueError, match="not valid JSON"):
        verify("induction-handbuilt")
    assert main(["zoo", "verify", "induction-handbuilt"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_recipes_cover_the_handbuilt_models():
    assert set(HANDBUILT) <= set(RECIPES)
    for name in HANDBUILT:
        assert zoo_card(name).recipe["builder"] == f"{RECIPES[name].__module__}.{RECIPES[name].__name__}"


def test_seed_changes_only_the_inert_heads():
    from circuitkit.zoo.recipes import build

    base, _, _ = build("induction-handbuilt", progress=False)
    other, _, card = build("induction-handbuilt", seed=1, progress=False)
    for layer in range(2):
        w_base, w_other = base.blocks[layer].attn.W_V, other.blocks[layer].attn.W_V
        assert w_base[0].equal(w_other[0])  # the circuit heads are fixed by construction
        assert not w_base[1:].equal(w_other[1:])  # the inert heads are random, per seed
    assert card.recipe["seed"] == 1 and card.accuracy == 1.0
    assert card.evidence["circuit_ablated_recovered"] < 0.2 and card.evidence["circuit_only_recovered"] == 1.0
