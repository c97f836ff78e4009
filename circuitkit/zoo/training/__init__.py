"""The zoo's trained models: seeded recipes that train small HookedTransformers on CPU (a few
minutes each on 2 cores), one module per recipe, and record their reference circuits
(`circuitkit.circuit.discovery.exhaustive`) on their cards.

``RECIPES`` maps a zoo name to ``builder(seed=0, progress=True, steps=None, circuit=True) ->
(model, tokenizer, ZooCard)``.
"""

from collections.abc import Callable
from typing import Any

from circuitkit.models.zoo_store import ZooCard
from circuitkit.zoo.training.cards import (
    docs_bpe_tokenizer,
    make_card,
    recircuit,
    zoo_word_tokenizer,
)
from circuitkit.zoo.training.data import (
    CopyCurriculum,
    MixedBatches,
    docs_token_split,
    fixed_repeat_batch,
    frequency_ranked,
    text_batch,
    varied_repeat_batch,
)
from circuitkit.zoo.training.induction import induction_fixed_period, induction_trained
from circuitkit.zoo.training.ioi import ioi_trained
from circuitkit.zoo.training.language_model import repeated_text_losses, tiny_lm, validation_loss
from circuitkit.zoo.training.loop import BatchFn, final_loss, new_model, task_accuracy, train_model
from circuitkit.zoo.training.needle import needle_trained, value_attending_heads

RECIPES: dict[str, Callable[..., tuple[Any, Any, ZooCard]]] = {
    "induction-trained": induction_trained,
    "induction-fixed-period": induction_fixed_period,
    "ioi-trained": ioi_trained,
    "needle-trained": needle_trained,
    "tiny-lm": tiny_lm,
}

__all__ = [
    "RECIPES", "BatchFn", "CopyCurriculum", "MixedBatches", "docs_bpe_tokenizer", "docs_token_split", "final_loss",
    "fixed_repeat_batch", "frequency_ranked", "induction_fixed_period", "induction_trained", "ioi_trained",
    "make_card", "needle_trained", "new_model", "recircuit", "repeated_text_losses", "task_accuracy", "text_batch",
    "tiny_lm", "train_model", "validation_loss", "value_attending_heads", "varied_repeat_batch",
    "zoo_word_tokenizer",
]
