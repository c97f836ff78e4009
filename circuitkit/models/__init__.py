"""Models: ``load_model(spec)`` for TransformerLens names, local Hugging Face directories and
``zoo:NAME``; `parse_spec` reads a spec; the zoo store (cards, weights) in
`circuitkit.models.zoo_store`; a zoo model written as a Hugging Face folder by
`circuitkit.models.hf_export`.

Names are imported on first use: the zoo store reads cards without torch or TransformerLens,
which `circuitkit.models.loading` needs.
"""

from circuitkit.lazy import lazy_exports

_EXPORTS = {
    "ExportRefused": "circuitkit.models.hf_export",
    "export_zoo_hf": "circuitkit.models.hf_export",
    "ModelLoadError": "circuitkit.models.loading",
    "ModelSpec": "circuitkit.models.loading",
    "load_model": "circuitkit.models.loading",
    "parse_spec": "circuitkit.models.loading",
    "ZooCard": "circuitkit.models.zoo_store",
    "list_zoo": "circuitkit.models.zoo_store",
    "load_zoo_model": "circuitkit.models.zoo_store",
    "zoo_card": "circuitkit.models.zoo_store",
    "zoo_task": "circuitkit.models.zoo_store",
    "zoo_tokenizer": "circuitkit.models.zoo_store",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
