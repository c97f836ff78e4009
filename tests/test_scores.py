import pytest
import torch

from circuitkit import Scores


def test_head_grid_round_trip_and_frame():
    grid = torch.arange(6.0).reshape(2, 3)
    s = Scores.from_head_grid(grid, method="test", task="t")
    assert s["a1.h2"] == 5.0
    assert torch.equal(s.head_grid(), grid)
    frame = s.to_frame()
    assert list(frame.columns[:2]) == ["component", "score"]
    assert frame.loc[frame.component == "a1.h0", "layer"].item() == 1
    assert s.top(2) == [("a1.h2", 5.0), ("a1.h1", 4.0)]


def test_scores_reject_bad_labels():
    with pytest.raises(ValueError, match="one label per value"):
        Scores(torch.zeros(3), ["a0.h0", "a0.h1"], "m")
    with pytest.raises(ValueError, match="unique"):
        Scores(torch.zeros(2), ["a0.h0", "a0.h0"], "m")
    with pytest.raises(ValueError, match="mixes node and edge"):
        Scores(torch.zeros(2), ["a0.h0", "a0.h0->logits"], "m")
    with pytest.raises(ValueError, match="unknown component"):
        Scores(torch.zeros(1), ["attn0"], "m")
    with pytest.raises(KeyError, match="no score"):
        Scores(torch.zeros(1), ["a0.h0"], "m")["a0.h1"]
