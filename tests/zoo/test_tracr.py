"""tracr zoo models: they load without JAX, reproduce tracr's own outputs (recorded in the card when
the recipe compiled them) on every input, carry the circuit their weights allow, and pass verify."""

import sys

import pytest
import torch

from circuitkit import zoo_card, zoo_task
from circuitkit.circuit import Circuit
from circuitkit.models.zoo_store import load_zoo_model
from circuitkit.tasks.rasp import PROGRAMS
from circuitkit.zoo.recipes import RECIPES
from circuitkit.zoo.tracr import ACDC_PUBLISHED, model_outputs, outputs_agree, weight_circuit
from circuitkit.zoo.verification import verify

TRACR = {"tracr-reverse": "reverse", "tracr-hist": "hist", "tracr-frac-prevs": "frac_prevs"}


@pytest.fixture(scope="module", params=sorted(TRACR))
def shipped(request):
    name = request.param
    return name, TRACR[name], load_zoo_model(name), zoo_card(name)


def test_loads_and_runs_without_jax(monkeypatch):
    for module in ("jax", "jaxlib", "haiku", "tracr"):
        monkeypatch.setitem(sys.modules, module, None)  # any import of them now fails
    model = load_zoo_model("tracr-reverse")
    task = zoo_task("tracr-reverse", model)
    with torch.no_grad():
        assert float(task.with_metric("accuracy").score(model(task.clean))) == 1.0


def test_reproduces_tracr_on_every_input(shipped):
    name, program, model, card = shipped
    spec = PROGRAMS[program]
    recorded = card.evidence["program_outputs"]
    # every input of every length the program was compiled for (BOS excluded)
    assert len(recorded["inputs"]) == sum(len(spec.vocab) ** n for n in range(1, spec.max_seq_len + 1))
    got = model_outputs(model, recorded["inputs"], spec.categorical)
    assert outputs_agree(recorded["outputs"], got, spec.categorical) == []
    # the task's answers come from a plain-Python reference of the program: it agrees with tracr too
    reference = [spec.reference(xs) for xs in recorded["inputs"]]
    assert outputs_agree(recorded["outputs"], reference, spec.categorical, atol=1e-6) == []
    # and the comparison can fail: one wrong output is found
    flipped = [list(o) for o in got]
    flipped[-1][0] = "1" if spec.categorical and flipped[-1][0] != "1" else ("2" if spec.categorical else 9.0)
    assert outputs_agree(recorded["outputs"], flipped, spec.categorical) == [len(got) - 1]


def test_task_scores_every_position(shipped):
    name, program, model, card = shipped
    task = zoo_task(card, model)
    length = card.task["params"]["length"]
    assert task.answer_pos.shape == (len(task), length)
    assert task.answer_pos[0].tolist() == list(range(1, length + 1))
    with torch.no_grad():
        clean, corrupted = float(task.score(model(task.clean))), float(task.score(model(task.corrupted)))
    if PROGRAMS[program].categorical:
        assert clean == pytest.approx(1.0, abs=1e-4) and corrupted < 0.5  # one-hot outputs: logit diff 1
    else:
        assert clean == pytest.approx(0.0, abs=1e-8) and corrupted > 0.05  # mse against the program


def test_reference_circuit_is_read_off_the_weights(shipped):
    from circuitkit.attribution import exact_edge_patching

    name, program, model, card = shipped
    allowed = weight_circuit(model)
    assert sorted(allowed.edges) == sorted(card.evidence["weight_edges"])
    inert = card.evidence["inert_edges"]
    kept = Circuit.from_nodes_edges(edges=[e for e in allowed.edges if e not in inert]).prune_dangling()
    assert sorted(kept.edges) == sorted(card.circuit_edges) and kept.nodes == card.circuit_nodes
    # the inert edges change nothing when zero-ablated; every circuit edge does
    task = zoo_task(card, model)
    effects = exact_edge_patching(model, task, allowed.edges, ablation="zero", progress=False).as_dict()
    assert all(abs(effects[e]) < 1e-3 for e in inert)
    assert all(abs(effects[e]) > 0.01 for e in card.circuit_edges)
    # a head whose output weights are zeroed drops out with every edge through it
    head = next(n for n in card.circuit_nodes if n.startswith("a"))
    layer, index = int(head[1:].split(".")[0]), int(head.split(".h")[1])
    with torch.no_grad():
        saved = model.blocks[layer].attn.W_O[index].clone()
        model.blocks[layer].attn.W_O[index] = 0
        try:
            assert head not in weight_circuit(model).nodes
        finally:
            model.blocks[layer].attn.W_O[index] = saved


def test_circuits_equal_acdc_published_ones(shipped):
    name, program, model, card = shipped
    published = ACDC_PUBLISHED.get(program)
    if not published:  # ACDC published none for this program: the card must not claim one
        assert not card.evidence.get("acdc_published_edges")
        return
    assert sorted(card.circuit_edges) == sorted(published)
    assert sorted(card.evidence["acdc_published_edges"]) == sorted(published)


def test_verify_passes(shipped):
    name, program, model, card = shipped
    report = verify(model, card=card)
    assert report.passed, report.summary()
    assert report.edges_checked and report.edge_faithfulness == pytest.approx(1.0, abs=1e-4)
    assert report.floor == ("corrupted" if PROGRAMS[program].categorical else "all ablated")
    assert report.circuit_only == pytest.approx(card.evidence["circuit_only_recovered"], abs=1e-3)


def test_recipes_are_registered():
    assert set(TRACR) <= set(RECIPES)
    for name, program in TRACR.items():
        assert zoo_card(name).recipe["builder"] == f"circuitkit.zoo.tracr.build_tracr('{program}')"
        assert zoo_card(name).construction == "compiled"
