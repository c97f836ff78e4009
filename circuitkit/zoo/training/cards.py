"""What every trained recipe ends with: its tokenizer, the reference-circuit search, and its card."""

from __future__ import annotations

import functools
import time
from typing import Any

from circuitkit.circuit.discovery.exhaustive import CircuitSearch, find_circuit, find_edge_circuit
from circuitkit.errors import InputError
from circuitkit.models.zoo_store import (
    ZooCard,
    config_to_json,
    load_zoo_model,
    save_zoo_model,
    zoo_card,
    zoo_task,
)
from circuitkit.tasks.builders import build_task, default_words
from circuitkit.tokenizers import python_docs_corpus, train_bpe_tokenizer, word_level_tokenizer
from circuitkit.zoo.evidence import trained_evidence
from circuitkit.zoo.training.loop import task_accuracy


def zoo_word_tokenizer():
    """The word-level tokenizer over every word the default task builders use."""
    return word_level_tokenizer(default_words())

@functools.lru_cache(maxsize=2)
def docs_bpe_tokenizer(vocab_size: int = 2048):
    """A byte-level BPE tokenizer trained on Python's own docstrings (deterministic, offline;
    cached per process, as two recipes use it)."""
    return train_bpe_tokenizer(python_docs_corpus(), vocab_size=vocab_size)

def make_card(name: str, description: str, model, task, task_spec: dict[str, Any], recipe: dict[str, Any],
              search: CircuitSearch, extra_evidence: dict[str, Any] | None = None, progress: bool = True) -> ZooCard:
    """A trained model's card: config, task, recipe, accuracy, circuit (nodes, and edges refined
    by `find_edge_circuit`) and its evidence."""
    edge_search = find_edge_circuit(model, task, search.nodes, progress=progress)
    evidence = {**trained_evidence(search, edge_search), **(extra_evidence or {})}
    return ZooCard(
        name=name, description=description, config=config_to_json(model.cfg), task=task_spec,
        construction="trained", recipe=recipe, accuracy=round(task_accuracy(model, task), 4),
        circuit={"nodes": search.nodes, "edges": edge_search.edges}, evidence=evidence,
    )

def finish_recipe(name, description, model, tok, task_spec, recipe, extra_evidence, progress, t0, circuit=True):
    recipe["train_seconds"] = round(time.time() - t0, 1)
    model.eval()
    task = build_task(task_spec["builder"], tok, **task_spec["params"], metric=task_spec["metric"])
    if not circuit:  # a quick run: no circuit search
        return model, tok, ZooCard(name=name, description=description, config=config_to_json(model.cfg),
                                   task=task_spec, construction="trained", recipe=recipe,
                                   accuracy=round(task_accuracy(model, task), 4))
    search = find_circuit(model, task, progress=progress)
    card = make_card(name, description, model, task, task_spec, recipe, search, extra_evidence, progress)
    return model, tok, card

def recircuit(name: str, root=None, progress: bool = True):
    """Re-establish the circuit (nodes and edges) of shipped trained model ``name`` on its own
    weights, keeping its recipe and description, and save the model atomically under ``root``
    (default: the user's zoo folder; ``data/zoo`` in a checkout updates the bundled card); returns
    the card. For changes to how circuits are found, without retraining."""
    old = zoo_card(name)
    if old.construction != "trained":
        raise InputError(f"zoo model {name!r} is {old.construction}, not trained; its circuit is set by construction")
    model = load_zoo_model(name)
    task = zoo_task(old, model)
    search = find_circuit(model, task, progress=progress)
    kept = {k: v for k, v in old.evidence.items() if k == "retrieval_heads"}
    card = make_card(name, old.description, model, task, old.task, old.recipe, search, kept, progress)
    save_zoo_model(model, card, model.tokenizer, root=root)
    return card
