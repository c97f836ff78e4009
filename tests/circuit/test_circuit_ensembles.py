"""Ensembles (MIB shared task): the parallel mean against its explicit recomputation, the warm
start's starting gates, and both as registered discovery methods scored against a true circuit."""

import pytest
import torch

import circuitkit as ck
from circuitkit.ablation.edges import graph_index
from circuitkit.circuit import roc_auc
from circuitkit.circuit.discovery.ensembles import ensemble_mean, scale_normalized
from circuitkit.circuit.discovery.mask_learning import WARM_START_SPREAD, _initial_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ZOO = "induction-handbuilt"


@pytest.fixture(scope="module")
def zoo():
    return ck.load_model(f"zoo:{ZOO}"), ck.zoo_task(ZOO)


def test_the_parallel_mean_is_the_mean_of_scaled_member_scores(zoo):
    model, task = zoo
    mean = ensemble_mean(model, task, steps=3)
    members = [ck.eap(model, task, progress=False),
               ck.eap_ig(model, task, steps=3, progress=False),
               ck.eap_ig(model, task, steps=3, interpolate="activations", progress=False)]
    expected = torch.stack([m.values / m.values.abs().max() for m in members]).mean(0)
    assert mean.labels == members[0].labels
    torch.testing.assert_close(mean.values, expected.float(), atol=1e-6, rtol=1e-5)
    assert float(mean.values.abs().max()) <= 1 + 1e-6 and mean.meta["members"] == ["eap", "eap-ig-inputs",
                                                                                    "eap-ig-activations"]
    assert torch.equal(scale_normalized(torch.zeros(3)), torch.zeros(3))
    with pytest.raises(ValueError, match=r"ensemble members \['acdc'\] unknown"):
        ensemble_mean(model, task, members="eap,acdc")


def test_a_warm_start_opens_the_gates_in_the_order_of_its_ranking(zoo):
    model, task = zoo
    index = graph_index(model)
    ranking = ck.eap_ig(model, task, steps=3, progress=False)
    logits = _initial_logits(index, ranking)
    order = sorted(index.edges, key=lambda e: -abs(ranking.as_dict()[e]))
    by_edge = dict(zip(index.edges, logits.tolist(), strict=True))
    assert by_edge[order[0]] == pytest.approx(3.0) and by_edge[order[-1]] == pytest.approx(3.0 - WARM_START_SPREAD)
    assert [by_edge[e] for e in order] == sorted(by_edge.values(), reverse=True)
    assert torch.equal(_initial_logits(index, None), torch.full((len(index.edges),), 3.0))
    # a narrower spread keeps the order between 3 and 3 - spread
    narrow = dict(zip(index.edges, _initial_logits(index, ranking, spread=1.5).tolist(), strict=True))
    assert narrow[order[0]] == pytest.approx(3.0) and narrow[order[-1]] == pytest.approx(1.5)
    assert [narrow[e] for e in order] == sorted(narrow.values(), reverse=True)
    with pytest.raises(ValueError, match="warm_start_spread must be >= 0"):
        ck.edge_pruning(model, task, steps=1, progress=False, warm_start=ranking, warm_start_spread=-1.0)


@pytest.mark.parametrize("method", ["ensemble-mean", "eap-ig-pruning"])
def test_ensembles_find_the_true_circuit(zoo, method):
    model, task = zoo
    circuit = ck.discover(model, task, method)
    reference = ck.reference_circuit(ZOO)
    hidden = ck.zoo_card(ZOO).evidence.get("mean_ablation_invisible_edges", {})
    assert circuit.meta["faithfulness"] >= 0.9
    assert roc_auc(circuit.scores("edge"), reference, level="edge", ignore=hidden) >= 0.95
