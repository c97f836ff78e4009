"""Every zoo card records its evidence under the one schema of circuitkit.zoo.evidence."""

import pytest

from circuitkit import names
from circuitkit.models.zoo_store import list_zoo
from circuitkit.zoo.evidence import EDGE_KEYS, NODE_KEYS, missing_evidence

CARDS = list_zoo()


def test_every_bundled_model_is_checked():
    assert len(CARDS) == 10


@pytest.mark.parametrize("card", CARDS, ids=lambda c: c.name)
def test_card_evidence_follows_the_schema(card):
    assert missing_evidence(card) == []
    evidence = card.evidence
    method = {"hand-built": "construction", "compiled": "compilation"}.get(card.construction, "exhaustive ablation")
    assert evidence["method"] == method
    cfg = card.config
    components = [n for n in names.all_nodes(cfg["n_layers"], cfg["n_heads"], not cfg.get("attn_only", False))
                  if n not in (names.INPUT, names.LOGITS)]
    assert list(evidence["per_component_recovered"]) == components  # every head and MLP, in order
    assert evidence["circuit_only_recovered"] >= 0.9 and evidence["circuit_ablated_recovered"] < 0.2
    assert evidence["clean_metric"] != evidence["corrupted_metric"]
    if card.construction == "trained":
        assert set(EDGE_KEYS) <= set(evidence)
        assert set(card.circuit_edges) <= set(evidence["edge_effects"])


def test_a_card_without_the_schema_is_named(tmp_path):
    card = CARDS[0]
    broken = type(card)(**{**card.__dict__, "evidence": {k: v for k, v in card.evidence.items() if k != "clean_metric"}})
    assert missing_evidence(broken) == ["clean_metric"]
    assert set(NODE_KEYS) - set(broken.evidence) == {"clean_metric"}
