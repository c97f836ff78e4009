"""Bundled models whose circuits are known (``data/zoo``)."""

from circuitkit.models.zoo_store import (
    ZooCard,
    list_zoo,
    load_zoo_model,
    save_zoo_model,
    zoo_card,
    zoo_task,
    zoo_tokenizer,
)
from circuitkit.zoo.reference import reference_circuit
from circuitkit.zoo.verification import VerifyReport, verify

__all__ = [
    "VerifyReport",
    "ZooCard",
    "list_zoo",
    "reference_circuit",
    "load_zoo_model",
    "save_zoo_model",
    "verify",
    "zoo_card",
    "zoo_task",
    "zoo_tokenizer",
]
