"""circuit_stability: its overlap and rank figures against scipy and an explicit recomputation."""

import pytest
import torch
from scipy.stats import spearmanr

import circuitkit as ck
from circuitkit.circuit.discovery import score_edges
from circuitkit.circuit.stability import jaccard, spearman

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_spearman_with_ties_equals_scipy():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (40,), generator=gen).float()
    y = x + torch.randn(40, generator=gen)
    assert spearman(x, y) == pytest.approx(spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-9)
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5 and jaccard(set(), set()) == 1.0


def test_stability_compares_every_pair_of_resampled_runs():
    model = ck.load_model("zoo:induction-trained")
    task = ck.zoo_task("induction-trained", model)
    table = ck.circuit_stability(model, task, "eap", n_runs=3, k=10, seed=5)
    assert list(zip(table.run_a, table.run_b, strict=True)) == [(0, 1), (0, 2), (1, 2)]
    # run 0 and 1 again, by hand: the same seeded halves of the prompts
    gen = torch.Generator().manual_seed(5)
    halves = [torch.randperm(len(task), generator=gen)[:len(task) // 2].sort().values for _ in range(2)]
    runs = [score_edges(model, task.subset(idx), "eap") for idx in halves]
    tops = [set(sorted(r.labels, key=lambda e, d=r.as_dict(): -abs(d[e]))[:10]) for r in runs]
    assert table.jaccard[0] == pytest.approx(len(tops[0] & tops[1]) / len(tops[0] | tops[1]))
    assert table.spearman[0] == pytest.approx(spearmanr(runs[0].values, runs[1].values).statistic, abs=1e-9)
    assert table.attrs["jaccard_mean"] == pytest.approx(table.jaccard.mean())
    with pytest.raises(ValueError, match="n_runs must be a whole number >= 2"):
        ck.circuit_stability(model, task, "eap", n_runs=1)



def test_stability_of_a_pruning_method_compares_its_circuits():
    model = ck.load_model("zoo:tracr-hist")
    task = ck.zoo_task("tracr-hist", model)
    table = ck.circuit_stability(model, task, "acdc", n_runs=2, seed=1, threshold=0.01)
    gen = torch.Generator().manual_seed(1)
    halves = [torch.randperm(len(task), generator=gen)[:round(len(task) / 2)].sort().values for _ in range(2)]
    circuits = [ck.discover(model, task.subset(idx), "acdc", threshold=0.01, method_args={"seed": 1 + i})
                for i, idx in enumerate(halves)]
    edges = [set(c.edges) for c in circuits]
    assert table.attrs["compared"] == "circuits"
    assert table.jaccard[0] == pytest.approx(len(edges[0] & edges[1]) / len(edges[0] | edges[1]))
    labels = circuits[0].scores("edge").labels
    values = [[c.scores("edge").as_dict()[e] for e in labels] for c in circuits]
    assert table.spearman[0] == pytest.approx(spearmanr(*values).statistic, abs=1e-9, nan_ok=True)
