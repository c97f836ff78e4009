"""Model loading: TransformerLens names, local Hugging Face directories, ``zoo:NAME``."""

from circuitkit.models.loading import ModelLoadError, load_model

__all__ = ["ModelLoadError", "load_model"]
