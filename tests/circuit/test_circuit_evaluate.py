# ruff: noqa: F811  (pytest fixtures imported from circuit_fixtures are parameters here)
import numpy as np
import pytest
from circuit_fixtures import exact_scores, known_model, known_task  # noqa: F401  (fixtures)

from circuitkit import Scores
from circuitkit.ablation.edges import graph_edges
from circuitkit.circuit import Circuit
from circuitkit.circuit.evaluate import (
    EdgeEvaluator,
    evaluate,
    faithfulness,
    faithfulness_curve,
    rank_edges,
    smallest_faithful,
)

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
    x = frame["k"].to_numpy() / 100
    assert frame.attrs["cpr"] == pytest.approx(np.trapezoid(frame["f_signed"], x))
    assert frame.attrs["cmd"] == pytest.approx(np.trapezoid(np.abs(1 - frame["f_abs"]), x))
    # each point is the faithfulness of the top-n edges by |score|
    n = int(frame["n_edges"].iloc[6])
    by_abs = sorted(exact_scores.labels, key=lambda e: (-abs(exact_scores[e]), e))  # ties by id
    assert frame["f_abs"].iloc[6] == pytest.approx(evaluator.faithfulness(by_abs[:n]))
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
