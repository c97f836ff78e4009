"""The zoo's bundled models (``zoo/NAME/``), installed as the package ``circuitkit.data``."""
