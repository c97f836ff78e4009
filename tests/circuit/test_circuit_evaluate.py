# ruff: noqa: F811  (pytest fixtures imported from circuit_fixtures are parameters here)
import numpy as np
import pytest
from circuit_fixtures import exact_scores, known_model, known_task  # noqa: F401  (fixtures)

from circuitkit import Scores, names
from circuitkit.ablation.edges import graph_edges
from circuitkit.circuit import Circuit
from circuitkit.circuit.evaluation import (
    EdgeEvaluator,
    curve_areas,
    evaluate,
    faithfulness,
    faithfulness_curve,
    mib_prune,
    rank_edges,
    smallest_faithful,
)
from circuitkit.zoo import reference_circuit

LIVE_HEADS = ["a0.h0", "a1.h1"]  # see conftest.dead_head_model
DEAD_HEADS = ["a0.h1", "a1.h0"]


@pytest.fixture(scope="module")
def evaluator(known_model, known_task):
    return EdgeEvaluator(known_model, known_task, "mean")


def test_faithfulness_endpoints_and_known_circuit(known_model, known_task, evaluator):
    edges = graph_edges(known_model)
    full = Circuit.from_nodes_edges(edges=edges)
    assert evaluator.faithfulness(edges) == pytest.approx(1.0, abs=1e-4)
    assert evaluator.faithfulness([]) == 0.0
    # the live heads carry everything the heads do: a node circuit of them is fully faithful
    live = evaluate(known_model, known_task, Circuit.from_nodes_edges(LIVE_HEADS), evaluator=evaluator)
    assert live.faithfulness == pytest.approx(1.0, abs=1e-4)
    assert live.n_edges == 12  # input/a0.h0 into a1.h1's q,k,v (6), input into a0.h0 (3), 3 into logits
    # ablating the dead heads changes nothing: they account for none of the behaviour
    dead = evaluate(known_model, known_task, Circuit.from_nodes_edges(DEAD_HEADS), evaluator=evaluator)
    assert dead.completeness == pytest.approx(0.0, abs=1e-4)
    assert 0 < evaluate(known_model, known_task, full, evaluator=evaluator).completeness
    assert faithfulness(known_model, known_task, full, ablation="corrupted") == pytest.approx(1.0, abs=1e-4)


def test_curve_areas_match_trapezoid(known_model, known_task, exact_scores, evaluator):
    frame = faithfulness_curve(known_model, known_task, exact_scores, evaluator=evaluator)
    assert list(frame["k"]) == [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]
    assert frame["n_edges"].iloc[-1] == 29 and frame["f_abs"].iloc[-1] == pytest.approx(1.0, abs=1e-4)
    assert list(frame["n_edges"]) == [int(k / 100 * 29) for k in frame["k"]]  # MIB's sizes, rounded down
    x = frame["k"].to_numpy() / 100
    assert frame.attrs["cpr"] == pytest.approx(np.trapezoid(frame["f_signed"], x))
    assert frame.attrs["cmd"] == pytest.approx(np.trapezoid(np.abs(1 - frame["f_abs"]), x))
    # each point is the faithfulness of the top-n edges by |score|, pruned to input -> logits paths
    n = int(frame["n_edges"].iloc[6])
    by_abs = sorted(exact_scores.labels, key=lambda e: (-abs(exact_scores[e]), e))  # ties by id
    assert frame["f_abs"].iloc[6] == pytest.approx(evaluator.faithfulness(mib_prune(by_abs[:n])))
    with pytest.raises(ValueError, match="percentages of edges"):
        faithfulness_curve(known_model, known_task, exact_scores, ks=(0, 10), evaluator=evaluator)
    with pytest.raises(ValueError, match="pass edge Scores"):
        faithfulness_curve(known_model, known_task, Scores.from_dict({"a0.h0": 1.0}, "x"), evaluator=evaluator)


def test_smallest_faithful_binary_against_linear(known_model, known_task, exact_scores, evaluator):
    fast = smallest_faithful(known_model, known_task, exact_scores, 0.9, evaluator=evaluator)
    slow = smallest_faithful(known_model, known_task, exact_scores, 0.9, search="linear", evaluator=evaluator)
    order = rank_edges(exact_scores, evaluator.model_edges, by_abs=True)
    n = fast.meta["n_edges"]
    assert evaluator.faithfulness(order[:n]) >= 0.9 > evaluator.faithfulness(order[:n - 1])  # a crossing point
    assert slow.meta["n_edges"] <= n and fast.meta["faithfulness"] >= 0.9
    assert all(evaluator.faithfulness(order[:m]) < 0.9 for m in range(slow.meta["n_edges"]))
    assert len(fast.edges) == n and set(fast.edges) == set(order[:n])
    with pytest.raises(ValueError, match="target faithfulness"):
        smallest_faithful(known_model, known_task, exact_scores, 1.5, evaluator=evaluator)


def test_bad_evaluation_input(known_model, known_task, evaluator):
    with pytest.raises(ValueError, match="unknown ablation"):
        EdgeEvaluator(known_model, known_task, "noise")
    with pytest.raises(ValueError, match="edges not in this model's graph"):
        evaluate(known_model, known_task, Circuit.from_nodes_edges(edges=["m0->logits"]), evaluator=evaluator)


class _StubEvaluator:
    """Faithfulness = the sum of fixed per-edge weights: a curve computable by hand."""

    ablation = "stub"

    def __init__(self, weights):
        self.weights = weights
        self.model_edges = list(weights)

    def faithfulness(self, edges):
        return sum(self.weights[e] for e in edges)


class _Task:
    name = "worked-example"


def test_curve_follows_mib_definitions_on_a_worked_example():
    """1 layer, 2 heads, attention only (9 edges), ks = 10/25/50/100 %. By hand, as MIB defines it:
    sizes int(k/100 * 9) = 0, 2, 4, 9; top-n, then EAP-IG's prune (an edge out of a head that
    keeps none of its inputs goes); faithfulness; trapezoids over k/100."""
    weights = {e: 0.0 for e in names.all_edges(1, 2, False)}
    weights.update({"a0.h0->logits": 0.4, "input->a0.h0<v>": 0.3, "input->a0.h0<q>": 0.1, "input->logits": 0.3,
                    "a0.h1->logits": -0.1})
    ck = {"a0.h0->logits": -4, "input->a0.h0<v>": -3, "input->logits": -2, "input->a0.h0<q>": -1,
          "input->a0.h0<k>": -0.5, "input->a0.h1<q>": 0.2, "input->a0.h1<k>": 0.3, "input->a0.h1<v>": 0.6,
          "a0.h1->logits": 5}  # circuitkit's sign: the needed edges negative
    scores = Scores.from_dict(ck, "worked")
    ev, ks = _StubEvaluator(weights), (10, 25, 50, 100)
    frame = faithfulness_curve(None, _Task(), scores, ks=ks, evaluator=ev)
    assert list(frame["n_edges"]) == [0, 2, 4, 9]
    # signed (most needed first): a0.h0->logits, input->a0.h0<v> | input->logits, input->a0.h0<q> | ...
    assert list(frame["n_signed"]) == [0, 2, 4, 9]
    assert list(frame["f_signed"]) == pytest.approx([0, 0.7, 1.1, 1.0])
    # |score|: a0.h1->logits, a0.h0->logits (both headless: pruned) | input->a0.h0<v>, input->logits
    assert list(frame["n_abs"]) == [0, 0, 3, 9]
    assert list(frame["f_abs"]) == pytest.approx([0, 0, 1.0, 1.0])
    cpr = 0.15 * (0 + 0.7) / 2 + 0.25 * (0.7 + 1.1) / 2 + 0.5 * (1.1 + 1.0) / 2  # = 0.8025
    cmd = 0.15 * (1 + 1) / 2 + 0.25 * (1 + 0) / 2 + 0.5 * 0  # = 0.275
    assert frame.attrs["cpr"] == pytest.approx(cpr) and frame.attrs["cmd"] == pytest.approx(cmd)
    assert curve_areas(ks, frame["f_signed"])[0] == pytest.approx(cpr)
    # MIB's loss attributions (-score) with sign="mib": the same curve
    mib = faithfulness_curve(None, _Task(), Scores.from_dict({k: -v for k, v in ck.items()}, "worked"), ks=ks,
                             evaluator=ev, sign="mib")
    assert mib[["f_signed", "f_abs"]].equals(frame[["f_signed", "f_abs"]])
    # the trap: circuitkit scores read with MIB's sign keep a0.h1, which hurts
    trap = faithfulness_curve(None, _Task(), scores, ks=ks, evaluator=ev, sign="mib")
    assert list(trap["f_signed"]) == pytest.approx([0, -0.1, -0.1, 1.0])
    assert trap.attrs["cpr"] == pytest.approx(0.15 * -0.05 + 0.25 * -0.1 + 0.5 * 0.45)
    # without pruning the headless a0.h1->logits / a0.h0->logits pair counts
    assert faithfulness_curve(None, _Task(), scores, ks=ks, evaluator=ev, prune=False)["f_abs"].iloc[1] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="sign must be"):
        faithfulness_curve(None, _Task(), scores, ks=ks, evaluator=ev, sign="loss")


def test_reference_circuit_tops_the_curve_on_the_handbuilt_induction_model():
    """The reference circuit ranked first gives the best CPR a 7-edge circuit can have on MIB's
    grid (faithfulness 1 from the first size that holds it, 10 % of 81 edges), under both sign
    conventions; read with the wrong sign it falls to 0.25 (the 100 % point only)."""
    from circuitkit import load_model, zoo_task

    model = load_model("zoo:induction-handbuilt", device="cpu")
    task = zoo_task("induction-handbuilt", model)
    ref = reference_circuit("induction-handbuilt")
    ev = EdgeEvaluator(model, task, "mean")
    needed = {e: (-1.0 if e in ref.edges else 0.0) for e in ev.model_edges}  # circuitkit's sign
    ours = faithfulness_curve(model, task, Scores.from_dict(needed, "reference"), evaluator=ev)
    theirs = faithfulness_curve(model, task, Scores.from_dict({e: -v for e, v in needed.items()}, "reference"),
                                evaluator=ev, sign="mib")
    for frame in (ours, theirs):
        holds = frame["n_edges"] >= len(ref.edges)
        assert list(frame.loc[holds, "f_signed"]) == pytest.approx([1.0] * int(holds.sum()), abs=1e-4)
        assert frame.attrs["cpr"] > 0.92 and frame.attrs["cmd"] < 0.08
    assert theirs.attrs["cpr"] == pytest.approx(ours.attrs["cpr"])
    trap = faithfulness_curve(model, task, Scores.from_dict(needed, "reference"), evaluator=ev, sign="mib")
    assert trap.attrs["cpr"] == pytest.approx(0.25, abs=0.01)
