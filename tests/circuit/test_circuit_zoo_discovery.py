"""`circuitkit discover` with EAP-IG against every zoo model's reference circuit (the circuits
known to be true): the edge ROC-AUC of the saved circuit's scores and its faithfulness, read back
from the file the command wrote."""

import pytest

from circuitkit.circuit import load_circuit, roc_auc
from circuitkit.cli import main
from circuitkit.zoo import list_zoo, reference_circuit, zoo_card

WITH_REFERENCE = [card.name for card in list_zoo() if card.circuit_edges]


def test_every_zoo_model_with_a_reference_is_covered():
    assert {"induction-handbuilt", "retrieval-handbuilt", "needle-trained", "tiny-lm"} <= set(WITH_REFERENCE)


@pytest.mark.parametrize("name", WITH_REFERENCE)
def test_eap_ig_discover_recovers_the_reference(name, tmp_path):
    card = zoo_card(name)
    out = tmp_path / "circuit.json"
    assert main(["discover", "--model", f"zoo:{name}", "--method", "eap-ig", "--out", str(out), "--quiet"]) == 0
    circuit = load_circuit(out)
    assert circuit.meta["ablation"] == "mean" and circuit.meta["discovery"] == "eap-ig"
    assert circuit.meta["faithfulness"] >= 0.9
    # Edges a card measured as carrying only what every prompt shares are invisible to mean ablation.
    hidden = card.evidence.get("mean_ablation_invisible_edges", {})
    assert roc_auc(circuit.scores("edge"), reference_circuit(card), level="edge", ignore=hidden) >= 0.95
