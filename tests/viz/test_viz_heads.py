"""The layer x head heatmap of head scores."""

import torch

from circuitkit.heads import retrieval_scores
from circuitkit.viz.heads import head_heatmap


def test_heatmap_shows_the_head_grid(toy_model, toy_task):
    scores = retrieval_scores(toy_model, toy_task, progress=False)
    fig = head_heatmap(scores, title="toy")
    heat = fig.data[0]
    assert torch.equal(torch.tensor(heat.z, dtype=torch.float), scores.head_grid())
    assert heat.text[1][0] == "a1.h0" and fig.layout.title.text == "toy"
