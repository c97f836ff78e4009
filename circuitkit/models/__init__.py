"""Models: ``load_model(spec)`` for TransformerLens names, local Hugging Face directories and
``zoo:NAME``; :func:`parse_spec` reads a spec; the zoo store (cards, weights) in
:mod:`circuitkit.models.zoo_store`."""

from circuitkit.models.loading import ModelLoadError, ModelSpec, load_model, parse_spec
from circuitkit.models.zoo_store import (
           ZooCard,
           list_zoo,
           load_zoo_model,
           zoo_card,
           zoo_task,
           zoo_tokenizer,
)

__all__ = ["ModelLoadError", "ModelSpec", "ZooCard", "list_zoo", "load_model", "load_zoo_model", "parse_spec",
           "zoo_card", "zoo_task", "zoo_tokenizer"]
