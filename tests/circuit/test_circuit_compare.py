import itertools

import pytest
import torch

from circuitkit import Scores
from circuitkit.circuit import (
    Circuit,
    overlap,
    overlap_matrix,
    rank_auc,
    roc_auc,
    shared_components,
)


def test_rank_auc_hand_computed_with_ties():
    # positives 0.9, 0.5, 0.3; negatives 0.5, 0.2, 0.1.
    # pairs (pos > neg): 0.9 beats all 3; 0.5 beats 0.2, 0.1 and ties 0.5 (1/2); 0.3 beats 0.2, 0.1
    # -> (3 + 2.5 + 2) / 9
    values = torch.tensor([0.9, 0.5, 0.3, 0.5, 0.2, 0.1])
    positive = torch.tensor([True, True, True, False, False, False])
    assert rank_auc(values, positive) == pytest.approx(7.5 / 9)
    # slow obvious path: count pairs
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        v = torch.randint(0, 4, (12,), generator=g).float()  # many ties
        p = torch.rand(12, generator=g) > 0.5
        pairs = [1.0 if a > b else 0.5 if a == b else 0.0
                 for a, b in itertools.product(v[p].tolist(), v[~p].tolist())]
        assert rank_auc(v, p) == pytest.approx(sum(pairs) / len(pairs))
    with pytest.raises(ValueError, match="positives and negatives"):
        rank_auc(torch.ones(3), torch.ones(3, dtype=torch.bool))


def test_roc_auc_edges_and_nodes():
    scores = Scores.from_dict({"input->a0.h0<q>": 3.0, "a0.h0->logits": -2.0, "input->a0.h1<k>": 0.5,
                               "a0.h1->logits": 0.1, "input->logits": -1.0}, "eap")
    ref = Circuit.from_nodes_edges(edges=["input->a0.h0<q>", "a0.h0->logits"])
    assert roc_auc(scores, ref) == 1.0  # |score| ranks both reference edges first
    assert roc_auc(scores, ref, by_abs=False) == pytest.approx(3 / 6)  # signed: -2 sits below 0.5, 0.1, -1
    # node level: a0.h0 touches |3| + |-2| = 5 vs a0.h1 0.6
    assert roc_auc(scores, Circuit.from_nodes_edges(["a0.h0"]), level="node") == 1.0
    assert roc_auc(scores, ["a0.h1"], level="node") == 0.0
    with pytest.raises(ValueError, match="without a score"):
        roc_auc(scores, ["a1.h0->logits"])
    # ignore= leaves components out of both sides: the same as removing them by hand
    ref3 = ["input->a0.h0<q>", "a0.h0->logits", "input->a0.h1<k>"]
    hand = Scores.from_dict({k: v for k, v in scores.as_dict().items() if k != "a0.h0->logits"}, "eap")
    # |scores|: positives 3, 0.5 vs negatives 1.0, 0.1 -> 3 of 4 pairs; with a0.h0->logits (2): 5 of 6
    assert roc_auc(scores, ref3, ignore=["a0.h0->logits"]) == roc_auc(hand, [ref3[0], ref3[2]]) == pytest.approx(3 / 4)
    assert roc_auc(scores, ref3) == pytest.approx(5 / 6)


def test_overlap_and_cross_task_matrix():
    a = Circuit.from_nodes_edges(["a0.h0", "a1.h0", "a1.h1"])
    b = Circuit.from_nodes_edges(["a1.h0", "a1.h1", "m1", "a0.h2"])
    o = overlap(a, b)
    assert (o.precision, o.recall, o.iou, o.n_shared) == (pytest.approx(2 / 3), 0.5, pytest.approx(2 / 5), 2)
    c = ["a0.h0"]
    m = overlap_matrix({"ioi": a, "colored": b, "other": c})
    assert m.loc["ioi", "colored"] == pytest.approx(2 / 5) and m.loc["ioi", "ioi"] == 1.0
    assert m.loc["colored", "other"] == 0.0
    assert overlap_matrix({"ioi": a, "colored": b}, measure="overlap").loc["ioi", "colored"] == pytest.approx(2 / 3)
    shared = shared_components({"ioi": a, "colored": b})
    assert shared.loc["a1.h0", "n"] == 2 and shared.loc["m1", "n"] == 1
    with pytest.raises(ValueError, match="unknown overlap measure"):
        overlap_matrix({"a": a, "b": b}, measure="dice")
    with pytest.raises(ValueError, match="at least two circuits"):
        overlap_matrix({"a": a})
